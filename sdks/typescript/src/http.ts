/**
 * The one place that talks HTTP: timeouts, retries with backoff, and turning answers into
 * values or typed errors. Kept apart from the client so every method shares one retry policy.
 *
 * Retry policy: a call marked retryable is sent again after a network failure, a timeout, a
 * `429` or a `503` (`unavailable`, `outcome_unknown`), up to `maxRetries` more times, waiting
 * an exponential backoff with jitter and at least the `Retry-After` the server asked for.
 * Only calls that count once however often they arrive are marked retryable: GETs, reserve and
 * track (they carry an `Idempotency-Key` reused on every attempt), commit/release/extend
 * (idempotent by reservation id), and the other writes the server documents as repeatable.
 */

import { TollgateError, TollgateNetworkError } from "./errors.js";

/** First backoff step; doubled per attempt. */
const BACKOFF_BASE_MS = 100;
/** No single wait between attempts grows past this (unless `Retry-After` asks for more). */
const BACKOFF_MAX_MS = 5_000;
/** A `Retry-After` above this is capped: a client call should not hang for minutes. */
const RETRY_AFTER_MAX_MS = 30_000;

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface TransportOptions {
  baseUrl: string;
  /** The key sent as `Authorization: Bearer …` unless a request brings its own headers. */
  apiKey: string;
  timeoutMs: number;
  maxRetries: number;
  fetch: FetchLike;
  userAgent?: string;
}

export interface RequestSpec {
  method: "GET" | "POST" | "PUT" | "DELETE";
  path: string;
  query?: Record<string, string | number | undefined>;
  body?: unknown;
  idempotencyKey?: string;
  /** Headers of this request alone (lower-case names); an `authorization` here replaces the client's. */
  headers?: Record<string, string>;
  /** Safe to send more than once (see the module doc). */
  retryable: boolean;
}

export class Transport {
  private readonly options: TransportOptions;

  constructor(options: TransportOptions) {
    this.options = options;
  }

  /** Sends the request, retrying as the policy allows; answers the parsed JSON body. */
  async request<T>(spec: RequestSpec): Promise<T> {
    const maxAttempts = spec.retryable ? this.options.maxRetries + 1 : 1;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.attempt<T>(spec);
      } catch (error) {
        if (attempt >= maxAttempts || !isRetryable(error)) throw error;
        await sleep(backoffMs(attempt, error));
      }
    }
  }

  private async attempt<T>(spec: RequestSpec): Promise<T> {
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.options.apiKey}`,
      accept: "application/json",
      ...spec.headers,
    };
    if (spec.body !== undefined) headers["content-type"] = "application/json";
    if (spec.idempotencyKey !== undefined) headers["idempotency-key"] = spec.idempotencyKey;
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.options.timeoutMs);
    try {
      let response: Response;
      try {
        response = await this.options.fetch(this.url(spec), {
          method: spec.method,
          headers,
          body: spec.body === undefined ? undefined : JSON.stringify(spec.body),
          signal: controller.signal,
        });
      } catch (cause) {
        throw networkError(spec, cause, timedOut, this.options.timeoutMs);
      }
      let text: string;
      try {
        text = await response.text();
      } catch (cause) {
        throw networkError(spec, cause, timedOut, this.options.timeoutMs);
      }
      if (response.ok) return parseJson(text, response) as T;
      throw errorFromResponse(response, text);
    } finally {
      clearTimeout(timer);
    }
  }

  private url(spec: RequestSpec): string {
    const base = this.options.baseUrl.replace(/\/+$/, "");
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(spec.query ?? {})) {
      if (value !== undefined) params.append(key, String(value));
    }
    const query = params.toString();
    return `${base}${spec.path}${query === "" ? "" : `?${query}`}`;
  }
}

function networkError(
  spec: RequestSpec,
  cause: unknown,
  timedOut: boolean,
  timeoutMs: number,
): TollgateNetworkError {
  const what = `${spec.method} ${spec.path}`;
  if (timedOut) {
    return new TollgateNetworkError(`${what} timed out after ${timeoutMs} ms`, { cause, timedOut: true });
  }
  const detail = cause instanceof Error ? cause.message : String(cause);
  return new TollgateNetworkError(`${what} failed: ${detail}`, { cause });
}

/** A 2xx body that is not JSON (a misconfigured proxy, say) is a typed error, not a SyntaxError. */
function parseJson(text: string, response: Response): unknown {
  if (text.trim() === "") return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new TollgateError({
      code: "invalid_response",
      status: response.status,
      message: `the answer (HTTP ${response.status}) is not JSON; is baseUrl a Tollgate server?`,
      requestId: response.headers.get("x-request-id") ?? undefined,
    });
  }
}

/** Builds the typed error from a non-2xx answer, tolerating bodies that are not the API's. */
function errorFromResponse(response: Response, text: string): TollgateError {
  let error: Record<string, unknown> = {};
  try {
    const parsed = JSON.parse(text) as { error?: unknown };
    if (parsed !== null && typeof parsed === "object" && typeof parsed.error === "object" && parsed.error !== null) {
      error = parsed.error as Record<string, unknown>;
    }
  } catch {
    // Not JSON (a proxy's HTML page, say): described by the HTTP status below.
  }
  const str = (value: unknown): string | undefined => (typeof value === "string" ? value : undefined);
  return new TollgateError({
    code: str(error.code) ?? `http_${response.status}`,
    status: response.status,
    message: str(error.message) ?? `HTTP ${response.status} ${response.statusText}`.trim(),
    field: str(error.field),
    reservationStatus: str(error.status),
    retryAfterMs: parseRetryAfter(response.headers.get("retry-after")),
    requestId: response.headers.get("x-request-id") ?? undefined,
    body: error,
  });
}

/** `Retry-After` is either delta-seconds or an HTTP date. */
function parseRetryAfter(value: string | null): number | undefined {
  if (value === null) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds) && seconds >= 0) return Math.min(seconds * 1000, RETRY_AFTER_MAX_MS);
  const date = Date.parse(value);
  if (Number.isNaN(date)) return undefined;
  return Math.min(Math.max(0, date - Date.now()), RETRY_AFTER_MAX_MS);
}

function isRetryable(error: unknown): boolean {
  if (error instanceof TollgateNetworkError) return true;
  if (error instanceof TollgateError) return error.status === 429 || error.status === 503;
  return false;
}

/** Exponential backoff with "equal jitter", never below the server's `Retry-After`. */
function backoffMs(attempt: number, error: unknown): number {
  const step = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** (attempt - 1));
  const jittered = step / 2 + Math.random() * (step / 2);
  const asked = error instanceof TollgateError ? error.retryAfterMs ?? 0 : 0;
  return Math.max(jittered, asked);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * A random idempotency key. Prefers `crypto.randomUUID`, then `crypto.getRandomValues`; the
 * last resort (runtimes with no Web Crypto, such as Node 18 without the global) mixes the time
 * with `Math.random`, which is unique enough for a 24-hour key but not secret.
 */
export function newIdempotencyKey(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c !== undefined && typeof c.randomUUID === "function") return `tg_${c.randomUUID()}`;
  const bytes = new Uint8Array(16);
  if (c !== undefined && typeof c.getRandomValues === "function") {
    c.getRandomValues(bytes);
  } else {
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `tg_${Date.now().toString(36)}_${hex}`;
}
