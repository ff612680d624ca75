/**
 * The `Tollgate` client: one method per API route the SDK covers, the `withReservation`
 * helper, and the unreachable-server policy. HTTP details live in `http.ts`; the fail-open
 * budget in `failopen.ts`; offline user tokens in `usertoken.ts`.
 *
 * A client holds a secret key (server side: every method), or only a publishable key and a
 * user token (a browser: `meUsage` and `meCredits`, which send the publishable key and the
 * `X-Tollgate-User-Token` header whatever other key the client holds).
 */

import { QuotaExceededError, TollgateError, TollgateNetworkError } from "./errors.js";
import { FailOpenLedger, LOCAL_RESERVATION_PREFIX, type PendingFailOpenUsage } from "./failopen.js";
import { newIdempotencyKey, Transport, type FetchLike } from "./http.js";
import type {
  CancelSubscriptionAnswer,
  CancelSubscriptionInput,
  CheckAnswer,
  CheckInput,
  CommitAnswer,
  CommitInput,
  CreateUserTokenOptions,
  Credits,
  EventsPage,
  EventsQuery,
  ExtendAnswer,
  ExtendInput,
  GrantCreditsAnswer,
  GrantCreditsInput,
  IdentifyAnswer,
  IdentifyInput,
  LedgerPage,
  LedgerQuery,
  Metadata,
  ReleaseAnswer,
  ReleaseInput,
  Reservation,
  ReserveAnswer,
  ReserveInput,
  RevokeCreditsAnswer,
  RevokeCreditsInput,
  Subscription,
  TrackAnswer,
  TrackInput,
  UpsertSubscriptionInput,
  Usage,
  UserToken,
  UserTokenSource,
} from "./types.js";

/** Default per-attempt timeout. */
const TIMEOUT_MS_DEFAULT = 10_000;
/** Default number of retries after the first attempt. */
const MAX_RETRIES_DEFAULT = 2;
/** The server's default reservation TTL, used to pace `withReservation`'s extensions. */
const TTL_SECONDS_DEFAULT = 60;
/** The server's caps on a release's `reason` and `errorCode`. */
const RELEASE_REASON_BYTES_MAX = 500;
const RELEASE_ERROR_CODE_BYTES_MAX = 100;

/**
 * What reserve, check and track do when the server cannot be reached (a network failure or
 * timeout, or a `503`, after all retries). `"closed"` (the default) throws the error.
 * `failOpen` admits each user up to `unitsPerUserPerHour` units per clock hour locally; see
 * `FailOpenLedger` and the README.
 */
export type UnreachablePolicy = "closed" | { failOpen: { unitsPerUserPerHour: number } };

export interface TollgateOptions {
  /** The server's URL, e.g. `http://127.0.0.1:7070`. */
  baseUrl: string;
  /**
   * A secret key (`tg_sk_test_…` or `tg_sk_live_…`). Keep it on the server side. Without one,
   * the client sends `publishableKey` and only `meUsage` and `meCredits` can work.
   */
  secretKey?: string;
  /** A publishable key (`tg_pk_…`), for `meUsage` and `meCredits` with `userToken`. */
  publishableKey?: string;
  /** The user token `meUsage` and `meCredits` send (from `createUserToken` or `mintUserToken`). */
  userToken?: UserTokenSource;
  /** Per-attempt timeout in milliseconds (default 10 000). */
  timeoutMs?: number;
  /** Retries after the first attempt for idempotent calls (default 2). */
  maxRetries?: number;
  onUnreachable?: UnreachablePolicy;
  /** A `fetch` implementation; for tests and unusual runtimes. Default: the global `fetch`. */
  fetch?: FetchLike;
}

/** What `withReservation`'s callback may return (or set on its reservation) to commit. */
export interface CommitSpec {
  quantity?: number;
  costMicros?: number;
  metadata?: Metadata;
}

export interface WithReservationInput {
  userId: string;
  event: string;
  quantity?: number;
  metadata?: Metadata;
  ttlSeconds?: number;
  idempotencyKey?: string;
}

/** The handle `withReservation` passes its callback. Set `quantity` etc. to commit them. */
export interface ReservationHandle extends CommitSpec {
  readonly reservationId: string;
  /** The reserve answer (limits, expiry, credits). */
  readonly answer: ReserveAnswer;
}

export interface WithReservationResult<T> {
  /** What the callback returned. */
  value: T;
  /** The commit's answer. */
  commit: CommitAnswer;
}

/** What `flush()` did: the track answers of the entries it reported, and how many are left. */
export interface FlushResult {
  tracked: TrackAnswer[];
  remaining: number;
}

export class Tollgate {
  readonly publishableKey: string | undefined;
  private readonly userToken: UserTokenSource | undefined;
  private readonly transport: Transport;
  private readonly failOpen: FailOpenLedger | undefined;

  constructor(options: TollgateOptions) {
    if (typeof options?.baseUrl !== "string" || options.baseUrl === "") {
      throw new TypeError("Tollgate: `baseUrl` is required");
    }
    const { secretKey, publishableKey, userToken } = options;
    if (secretKey !== undefined && (typeof secretKey !== "string" || secretKey === "")) {
      throw new TypeError("Tollgate: `secretKey` must be a non-empty string");
    }
    if (publishableKey !== undefined && (typeof publishableKey !== "string" || !publishableKey.startsWith("tg_pk_"))) {
      // Guards against a secret key shipped to a browser under the publishable key's name.
      throw new TypeError("Tollgate: `publishableKey` must be a publishable key, `tg_pk_…`");
    }
    if (secretKey === undefined && publishableKey === undefined) {
      throw new TypeError("Tollgate: `secretKey` (server side) or `publishableKey` with `userToken` (browser) is required");
    }
    if (userToken !== undefined && typeof userToken !== "string" && typeof userToken !== "function") {
      throw new TypeError("Tollgate: `userToken` must be a token string or a function answering one");
    }
    const fetchImpl = options.fetch ?? globalThis.fetch?.bind(globalThis);
    if (typeof fetchImpl !== "function") {
      throw new TypeError("Tollgate: no global `fetch` in this runtime; pass `fetch` in the options");
    }
    this.publishableKey = publishableKey;
    this.userToken = userToken;
    this.transport = new Transport({
      baseUrl: options.baseUrl,
      apiKey: secretKey ?? (publishableKey as string),
      timeoutMs: positiveInteger(options.timeoutMs, TIMEOUT_MS_DEFAULT, "timeoutMs"),
      maxRetries: nonNegativeInteger(options.maxRetries, MAX_RETRIES_DEFAULT, "maxRetries"),
      fetch: fetchImpl,
    });
    this.failOpen = failOpenLedger(options.onUnreachable);
  }

  // ---- Metering -------------------------------------------------------------------------

  /** `POST /v1/reserve`. Over quota is `allowed: false`, not an error. */
  async reserve(input: ReserveInput): Promise<ReserveAnswer> {
    const { idempotencyKey, ...body } = input;
    const key = idempotencyKey ?? newIdempotencyKey();
    try {
      return await this.transport.request<ReserveAnswer>({
        method: "POST",
        path: "/v1/reserve",
        body,
        idempotencyKey: key,
        retryable: true,
      });
    } catch (error) {
      if (this.failOpen !== undefined && isUnreachable(error)) {
        return this.failOpen.reserve(input, newIdempotencyKey);
      }
      throw error;
    }
  }

  /** `POST /v1/reservations/{id}/commit`. Committing again answers the same (idempotent). */
  async commit(reservationId: string, input: CommitInput = {}): Promise<CommitAnswer> {
    if (this.failOpen !== undefined && isLocal(reservationId)) {
      return this.failOpen.commit(reservationId, input, newIdempotencyKey);
    }
    return this.transport.request<CommitAnswer>({
      method: "POST",
      path: `${reservationPath(reservationId)}/commit`,
      body: input,
      retryable: true,
    });
  }

  /** `POST /v1/reservations/{id}/release`: gives the hold back. */
  async release(reservationId: string, input: ReleaseInput = {}): Promise<ReleaseAnswer> {
    if (this.failOpen !== undefined && isLocal(reservationId)) {
      return this.failOpen.release(reservationId);
    }
    return this.transport.request<ReleaseAnswer>({
      method: "POST",
      path: `${reservationPath(reservationId)}/release`,
      body: input,
      retryable: true,
    });
  }

  /** `POST /v1/reservations/{id}/extend`: `expiresAt = now + ttlSeconds`. */
  async extend(reservationId: string, input: ExtendInput = {}): Promise<ExtendAnswer> {
    return this.transport.request<ExtendAnswer>({
      method: "POST",
      path: `${reservationPath(reservationId)}/extend`,
      body: input,
      retryable: true,
    });
  }

  /** `GET /v1/reservations/{id}`. */
  async getReservation(reservationId: string): Promise<Reservation> {
    return this.transport.request<Reservation>({ method: "GET", path: reservationPath(reservationId), retryable: true });
  }

  /** `POST /v1/track`: records usage in one step (with `enforce: true`, only if it fits). */
  async track(input: TrackInput): Promise<TrackAnswer> {
    const { idempotencyKey, ...body } = input;
    const key = idempotencyKey ?? newIdempotencyKey();
    try {
      return await this.sendTrack(body, key);
    } catch (error) {
      if (this.failOpen !== undefined && isUnreachable(error)) return this.failOpen.track(input, key);
      throw error;
    }
  }

  /** `POST /v1/check`: decides like a reserve, changes nothing. */
  async check(input: CheckInput): Promise<CheckAnswer> {
    try {
      return await this.transport.request<CheckAnswer>({ method: "POST", path: "/v1/check", body: input, retryable: true });
    } catch (error) {
      if (this.failOpen !== undefined && isUnreachable(error)) return this.failOpen.check(input);
      throw error;
    }
  }

  /** `GET /v1/users/{userId}/usage[?event=…]`. */
  async usage(userId: string, options: { event?: string } = {}): Promise<Usage> {
    return this.transport.request<Usage>({
      method: "GET",
      path: `/v1/users/${encodeURIComponent(userId)}/usage`,
      query: { event: options.event },
      retryable: true,
    });
  }

  /** `GET /v1/events`: usage events, newest first, a page at a time. */
  async events(query: EventsQuery = {}): Promise<EventsPage> {
    const { metadata, ...rest } = query;
    const params: Record<string, string | number | undefined> = { ...rest };
    for (const [key, value] of Object.entries(metadata ?? {})) params[`metadata.${key}`] = value;
    return this.transport.request<EventsPage>({ method: "GET", path: "/v1/events", query: params, retryable: true });
  }

  /** `POST /v1/identify`: merges an anonymous id into a user (again: `merged: false`). */
  async identify(input: IdentifyInput): Promise<IdentifyAnswer> {
    return this.transport.request<IdentifyAnswer>({ method: "POST", path: "/v1/identify", body: input, retryable: true });
  }

  // ---- Subscriptions --------------------------------------------------------------------

  /** `POST /v1/subscriptions`: create or update (the same call twice is a no-op). */
  async upsertSubscription(input: UpsertSubscriptionInput): Promise<Subscription> {
    return this.transport.request<Subscription>({ method: "POST", path: "/v1/subscriptions", body: input, retryable: true });
  }

  /**
   * `POST /v1/subscriptions/cancel`. Not retried automatically: a repeat after the end answers
   * `409 already_canceled`, which would hide that the first one worked.
   */
  async cancelSubscription(input: CancelSubscriptionInput): Promise<CancelSubscriptionAnswer> {
    return this.transport.request<CancelSubscriptionAnswer>({
      method: "POST",
      path: "/v1/subscriptions/cancel",
      body: input,
      retryable: false,
    });
  }

  /** `GET /v1/subscriptions/{userId}`; `404 not_found` if the user never had one. */
  async getSubscription(userId: string): Promise<Subscription> {
    return this.transport.request<Subscription>({
      method: "GET",
      path: `/v1/subscriptions/${encodeURIComponent(userId)}`,
      retryable: true,
    });
  }

  // ---- Credits --------------------------------------------------------------------------

  /** `POST /v1/credits/grants`. Retried only with an `externalRef`, which makes it count once. */
  async grantCredits(input: GrantCreditsInput): Promise<GrantCreditsAnswer> {
    return this.transport.request<GrantCreditsAnswer>({
      method: "POST",
      path: "/v1/credits/grants",
      body: input,
      retryable: input.externalRef !== undefined,
    });
  }

  /** `POST /v1/credits/revoke` (revoking again removes nothing more). */
  async revokeCredits(input: RevokeCreditsInput): Promise<RevokeCreditsAnswer> {
    return this.transport.request<RevokeCreditsAnswer>({ method: "POST", path: "/v1/credits/revoke", body: input, retryable: true });
  }

  /** `GET /v1/users/{userId}/credits`: grants and per-pack balances. */
  async credits(userId: string): Promise<Credits> {
    return this.transport.request<Credits>({
      method: "GET",
      path: `/v1/users/${encodeURIComponent(userId)}/credits`,
      retryable: true,
    });
  }

  /** `GET /v1/users/{userId}/credits/ledger`: entries newest first, a page at a time. */
  async creditLedger(userId: string, query: LedgerQuery = {}): Promise<LedgerPage> {
    return this.transport.request<LedgerPage>({
      method: "GET",
      path: `/v1/users/${encodeURIComponent(userId)}/credits/ledger`,
      query: { limit: query.limit, cursor: query.cursor },
      retryable: true,
    });
  }

  // ---- User tokens and the browser routes ---------------------------------------------

  /**
   * `POST /v1/user-tokens` (secret key): a token that lets a browser read `userId`'s usage and
   * credits with the publishable key, for `ttlSeconds` (1–86 400, default 3 600). Offline, with
   * the token secret: `mintUserToken`.
   */
  async createUserToken(userId: string, options: CreateUserTokenOptions = {}): Promise<UserToken> {
    return this.transport.request<UserToken>({
      method: "POST",
      path: "/v1/user-tokens",
      body: { userId, ttlSeconds: options.ttlSeconds },
      // A token changes nothing on the server: asking twice is harmless.
      retryable: true,
    });
  }

  /** `GET /v1/me/usage[?event=…]`: the `usage` answer of the user token's user. */
  async meUsage(options: { event?: string } = {}): Promise<Usage> {
    return this.transport.request<Usage>({
      method: "GET",
      path: "/v1/me/usage",
      query: { event: options.event },
      headers: await this.userHeaders("meUsage"),
      retryable: true,
    });
  }

  /** `GET /v1/me/credits`: the `credits` answer of the user token's user. */
  async meCredits(): Promise<Credits> {
    return this.transport.request<Credits>({
      method: "GET",
      path: "/v1/me/credits",
      headers: await this.userHeaders("meCredits"),
      retryable: true,
    });
  }

  // ---- The reservation helper -----------------------------------------------------------

  /**
   * Reserve, run `work`, then commit or release:
   * - denied → throws `QuotaExceededError` (with `.answer`); `work` never runs;
   * - `work` resolves → commits with `ifExpired: "record"` (work that outran its TTL still
   *   counts); the quantity, `costMicros` and `metadata` committed are those set on the handle,
   *   overridden by those of the object `work` returns, if it returns one;
   * - `work` throws → releases with the error as `reason`, then rethrows the error;
   * - while `work` runs, the reservation is extended every `ttlSeconds / 2`.
   */
  async withReservation<T>(
    input: WithReservationInput,
    work: (reservation: ReservationHandle) => Promise<T> | T,
  ): Promise<WithReservationResult<T>> {
    const answer = await this.reserve(input);
    if (!answer.allowed || answer.reservationId === null) throw new QuotaExceededError(answer);
    const reservationId = answer.reservationId;
    const handle: ReservationHandle = { reservationId, answer };
    const stopExtending = this.keepAlive(reservationId, input.ttlSeconds ?? TTL_SECONDS_DEFAULT);
    let value: T;
    try {
      value = await work(handle);
    } catch (error) {
      stopExtending();
      await this.releaseAfterFailure(reservationId, error);
      throw error;
    }
    stopExtending();
    const spec = { ...pickCommitSpec(handle), ...pickCommitSpec(value) };
    const commit = await this.commit(reservationId, { ...spec, ifExpired: "record" });
    return { value, commit };
  }

  // ---- Fail-open ------------------------------------------------------------------------

  /** Usage admitted by the fail-open policy and not yet reported (empty when closed). */
  pendingFailOpen(): PendingFailOpenUsage[] {
    return this.failOpen?.list() ?? [];
  }

  /**
   * Reports what the fail-open policy admitted as `track` calls, oldest first, each with its
   * own idempotency key kept from the start, so a flush retried after a failure counts every
   * unit once. Stops at the first error and throws it; what was reported is forgotten, the
   * rest stays for the next flush. A `409 idempotency_conflict` means the usage is already
   * recorded (a track whose answer was lost) and is forgotten too.
   */
  async flush(): Promise<FlushResult> {
    const tracked: TrackAnswer[] = [];
    if (this.failOpen === undefined) return { tracked, remaining: 0 };
    for (const entry of this.failOpen.list()) {
      const { idempotencyKey, reservationId: _local, ...body } = entry;
      try {
        tracked.push(await this.sendTrack(body, idempotencyKey));
      } catch (error) {
        if (!(error instanceof TollgateError && error.code === "idempotency_conflict")) throw error;
      }
      this.failOpen.remove(idempotencyKey);
    }
    return { tracked, remaining: this.failOpen.list().length };
  }

  // ---- Internals ------------------------------------------------------------------------

  /** The publishable key and the current user token, as the `me` routes want them. */
  private async userHeaders(method: string): Promise<Record<string, string>> {
    if (this.publishableKey === undefined || this.userToken === undefined) {
      throw new TypeError(`Tollgate: ${method} needs \`publishableKey\` and \`userToken\` in the options`);
    }
    const token = typeof this.userToken === "function" ? await this.userToken() : this.userToken;
    if (typeof token !== "string" || token === "") {
      throw new TypeError(`Tollgate: ${method}: \`userToken\` answered no token`);
    }
    return { authorization: `Bearer ${this.publishableKey}`, "x-tollgate-user-token": token };
  }

  private sendTrack(body: Omit<TrackInput, "idempotencyKey">, idempotencyKey: string): Promise<TrackAnswer> {
    return this.transport.request<TrackAnswer>({ method: "POST", path: "/v1/track", body, idempotencyKey, retryable: true });
  }

  /** Extends every `ttlSeconds / 2` until stopped; a local reservation needs no extending. */
  private keepAlive(reservationId: string, ttlSeconds: number): () => void {
    if (isLocal(reservationId)) return () => undefined;
    let stopped = false;
    let inFlight = false;
    const timer = setInterval(() => {
      if (stopped || inFlight) return;
      inFlight = true;
      this.extend(reservationId, { ttlSeconds })
        .catch((error: unknown) => {
          // Not pending any more (expired, say): extending again cannot help; the commit
          // with `ifExpired: "record"` still records the work.
          if (error instanceof TollgateError && error.status === 409) stop();
        })
        .finally(() => {
          inFlight = false;
        });
    }, Math.max(1, (ttlSeconds * 1000) / 2));
    const stop = (): void => {
      stopped = true;
      clearInterval(timer);
    };
    return stop;
  }

  /** Releases after `work` threw; a failing release must not hide the caller's error. */
  private async releaseAfterFailure(reservationId: string, error: unknown): Promise<void> {
    const message = error instanceof Error ? error.message : String(error);
    const code = errorCodeOf(error);
    try {
      await this.release(reservationId, {
        reason: truncateBytes(message === "" ? "error" : message, RELEASE_REASON_BYTES_MAX),
        ...(code === undefined ? {} : { errorCode: truncateBytes(code, RELEASE_ERROR_CODE_BYTES_MAX) }),
      });
    } catch {
      // The reservation expires by itself at its TTL; the original error matters more.
    }
  }
}

function failOpenLedger(policy: UnreachablePolicy | undefined): FailOpenLedger | undefined {
  if (policy === undefined || policy === "closed") return undefined;
  const units = policy?.failOpen?.unitsPerUserPerHour;
  if (typeof units !== "number" || !Number.isSafeInteger(units) || units < 0) {
    throw new TypeError("Tollgate: `onUnreachable` is \"closed\" or { failOpen: { unitsPerUserPerHour: <integer ≥ 0> } }");
  }
  return new FailOpenLedger(units);
}

/** Unreachable: no answer at all, or the server said it cannot serve (503) even after retries. */
function isUnreachable(error: unknown): boolean {
  return error instanceof TollgateNetworkError || (error instanceof TollgateError && error.status === 503);
}

function isLocal(reservationId: string): boolean {
  return reservationId.startsWith(LOCAL_RESERVATION_PREFIX);
}

function reservationPath(reservationId: string): string {
  return `/v1/reservations/${encodeURIComponent(reservationId)}`;
}

function pickCommitSpec(source: unknown): CommitSpec {
  if (source === null || typeof source !== "object" || Array.isArray(source)) return {};
  const spec: CommitSpec = {};
  const record = source as Record<string, unknown>;
  if (typeof record.quantity === "number") spec.quantity = record.quantity;
  if (typeof record.costMicros === "number") spec.costMicros = record.costMicros;
  if (record.metadata !== null && typeof record.metadata === "object") spec.metadata = record.metadata as Metadata;
  return spec;
}

function errorCodeOf(error: unknown): string | undefined {
  if (error === null || typeof error !== "object") return undefined;
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string" && code !== "") return code;
  const name = (error as { name?: unknown }).name;
  return typeof name === "string" && name !== "" ? name : undefined;
}

/** Cuts `text` to at most `maxBytes` UTF-8 bytes without splitting a character. */
function truncateBytes(text: string, maxBytes: number): string {
  const encoder = new TextEncoder();
  if (encoder.encode(text).length <= maxBytes) return text;
  let out = "";
  let bytes = 0;
  for (const char of text) {
    const size = encoder.encode(char).length;
    if (bytes + size > maxBytes) break;
    out += char;
    bytes += size;
  }
  return out;
}

function positiveInteger(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value <= 0) throw new TypeError(`Tollgate: \`${name}\` must be a positive integer`);
  return value;
}

function nonNegativeInteger(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 0) throw new TypeError(`Tollgate: \`${name}\` must be an integer ≥ 0`);
  return value;
}
