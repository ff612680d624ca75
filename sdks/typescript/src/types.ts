/**
 * Request and answer shapes of the HTTP API (the contract's §3–§9, checked against the live
 * server). Field names are the wire's own camelCase names, so an answer is used as it arrives.
 * Quantities and `costMicros` are integers (JSON numbers up to 2^53−1, exact in a `number`).
 * Answers may carry fields added after this SDK was written; they pass through untouched.
 */

export type Metadata = Record<string, string>;

/** One limit's state (§3), as reserve, check, track, commit and usage return it. */
export interface LimitState {
  limitId: string;
  label: string;
  unit: string;
  kind: "consumable" | "concurrency" | string;
  scope: "user" | "account" | string;
  enforcement: "hard" | "soft" | string;
  quota: number;
  used: number;
  reserved: number;
  remaining: number;
  windowStart: string | null;
  resetsAt: string | null;
}

export type DenyReason =
  | "limit_reached"
  | "concurrency_limit_reached"
  | "unmatched_event"
  | "no_subscription"
  | string;

export interface CreditsHeld {
  held: number;
  grants?: Array<{ grantId: string; quantity: number }>;
}

export interface ReserveInput {
  userId: string;
  event: string;
  /** Default 1 (server side). */
  quantity?: number;
  metadata?: Metadata;
  /** 1–3600, default 60 (server side). */
  ttlSeconds?: number;
  /** Generated per call when absent; sent as the `Idempotency-Key` header and reused on retries. */
  idempotencyKey?: string;
  prompt?: string;
}

export interface ReserveAnswer {
  allowed: boolean;
  /** `rsv_…`; `local_…` for a fail-open reservation; `null` when denied. */
  reservationId: string | null;
  expiresAt?: string | null;
  planId?: string | null;
  reasons: DenyReason[];
  deniedBy: string[];
  limits: LimitState[];
  credits?: CreditsHeld;
  /** Present and true only when the answer was made locally by the fail-open policy. */
  failOpen?: boolean;
}

export interface CommitInput {
  /** The final quantity (default: the reserved one); may be 0. */
  quantity?: number;
  costMicros?: number;
  metadata?: Metadata;
  response?: string;
  /** `record` commits an expired reservation anyway (`late: true`); default `reject`. */
  ifExpired?: "reject" | "record";
}

export interface CommitAnswer {
  reservationId: string;
  status: "committed";
  eventId: string | null;
  quantity: number;
  overage: number;
  late?: boolean;
  limits: LimitState[];
  creditsUsed?: number;
  /** True when a fail-open (`local_…`) reservation was committed locally. */
  failOpen?: boolean;
}

export interface ReleaseInput {
  reason?: string;
  errorCode?: string;
  response?: string;
}

export interface ReleaseAnswer {
  reservationId: string;
  status: "released";
  limits: LimitState[];
  failOpen?: boolean;
}

export interface ExtendInput {
  ttlSeconds?: number;
}

export interface ExtendAnswer {
  reservationId: string;
  status: "pending";
  expiresAt: string;
}

export interface Reservation {
  reservationId: string;
  status: "pending" | "committed" | "released" | "expired";
  userId: string;
  event: string;
  quantity: number;
  metadata: Metadata;
  createdAt: string;
  expiresAt: string;
  eventId: string | null;
}

export interface TrackInput {
  userId: string;
  event: string;
  /** Default 1; may be 0. */
  quantity?: number;
  metadata?: Metadata;
  idempotencyKey?: string;
  /** RFC 3339; default now, at most 35 days back. */
  occurredAt?: string;
  costMicros?: number;
  prompt?: string;
  response?: string;
  /** True: an atomic check-and-record that records nothing when it would not fit. */
  enforce?: boolean;
}

export interface TrackAnswer {
  eventId: string | null;
  recorded: boolean;
  allowed: boolean;
  reasons: DenyReason[];
  matchStatus: "matched" | "unmatched" | "no_subscription" | string;
  overage: number;
  planId?: string | null;
  limits: LimitState[];
  creditsUsed?: number;
  failOpen?: boolean;
}

export interface CheckInput {
  userId: string;
  event: string;
  quantity?: number;
  metadata?: Metadata;
}

export interface CheckAnswer {
  allowed: boolean;
  planId?: string | null;
  reasons: DenyReason[];
  deniedBy: string[];
  limits: LimitState[];
  credits?: CreditsHeld;
  failOpen?: boolean;
}

export interface Subscription {
  subscriptionId: string;
  userId?: string;
  accountId?: string;
  planId: string;
  status: string;
  cycleStart: string;
  currentPeriod: { start: string; end: string };
  endsAt: string | null;
  createdAt: string;
  customLimits?: Record<string, number>;
  seats?: number | null;
  timezone?: string;
  changed?: boolean;
}

export interface CreditBalance {
  packId: string | null;
  itemId: string;
  unit: string;
  available: number;
  held: number;
}

export interface Usage {
  userId: string;
  planId: string | null;
  subscription: Subscription | null;
  limits: LimitState[];
  credits: CreditBalance[];
}

export interface UsageEvent {
  eventId: string;
  occurredAt: string;
  userId: string;
  accountId: string | null;
  anonymousId?: string;
  event: string;
  quantity: number;
  metadata: Metadata;
  costMicros: number | null;
  status: "committed" | "released" | "expired" | "tracked" | "denied" | string;
  planId: string | null;
  reservationId: string | null;
  reasons: DenyReason[];
  overage: number;
  creditsUsed: number;
}

export interface EventsQuery {
  userId?: string;
  accountId?: string;
  /** A name or a glob with `*`. */
  event?: string;
  status?: UsageEvent["status"];
  from?: string;
  to?: string;
  /** Sent as `metadata.KEY=VALUE` parameters. */
  metadata?: Metadata;
  /** 1–1000, default 100. */
  limit?: number;
  cursor?: string;
}

export interface EventsPage {
  events: UsageEvent[];
  nextCursor: string | null;
}

export interface IdentifyInput {
  anonymousId: string;
  userId: string;
  traits?: Record<string, unknown>;
}

export interface IdentifyAnswer {
  userId: string;
  merged: boolean;
  eventsMerged?: number;
}

/** Exactly one of `userId` and `accountId`. */
export interface UpsertSubscriptionInput {
  userId?: string;
  accountId?: string;
  planId: string;
  cycleStart?: string;
  endsAt?: string | null;
  customLimits?: Record<string, number>;
  seats?: number | null;
  status?: "active" | "trialing" | "past_due";
  timezone?: string | null;
}

export interface CancelSubscriptionInput {
  userId?: string;
  accountId?: string;
  /** `now` (default), `period_end` or an RFC 3339 timestamp. */
  at?: "now" | "period_end" | string;
  reason?: string;
}

export interface CancelSubscriptionAnswer {
  subscriptionId: string;
  planId: string;
  endsAt: string;
}

export interface GrantCreditsInput {
  userId?: string;
  accountId?: string;
  packId: string;
  /** Number of packs, default 1. */
  quantity?: number;
  /** Makes the grant happen once; with it, the call is safe to retry. */
  externalRef?: string;
  expiresAt?: string | null;
  source?: "purchase" | "grant" | "refund" | "manual";
  note?: string;
}

export interface CreditGrant {
  grantId: string;
  userId?: string;
  accountId?: string;
  packId: string | null;
  itemId: string;
  unit: string;
  quantity: number;
  remaining: number;
  held: number;
  available?: number;
  priority?: number;
  expiresAt: string | null;
  source: string;
  externalRef: string | null;
  note: string | null;
  createdAt: string;
}

export interface GrantCreditsAnswer {
  created: boolean;
  grants: CreditGrant[];
}

/** Exactly one of `grantId` and `externalRef`. */
export interface RevokeCreditsInput {
  grantId?: string;
  externalRef?: string;
  reason?: string;
}

export interface RevokeCreditsAnswer {
  revoked: Array<{ grantId: string; quantity: number }>;
}

export interface Credits {
  userId: string;
  grants: CreditGrant[];
  packs: CreditBalance[];
}

export interface LedgerQuery {
  limit?: number;
  cursor?: string;
}

export interface LedgerEntry {
  entryId: string;
  at: string;
  type: "grant" | "hold" | "release" | "burn" | "refund" | "expire" | "revoke" | "rollover" | string;
  grantId: string;
  quantity: number;
  remainingAfter: number;
  heldAfter: number;
  reservationId: string | null;
  eventId: string | null;
  externalRef: string | null;
  reason: string | null;
}

export interface LedgerPage {
  entries: LedgerEntry[];
  nextCursor: string | null;
}

/** The environment a key, a token secret or a user token belongs to. */
export type Environment = "test" | "live";

/**
 * What `mintUserToken` signs: the contract's user token, version 1. The first three values are
 * those `GET /v1/settings` shows to a secret key (`tokenSecret`, `projectId`, `environment`).
 */
export interface MintUserTokenInput {
  /** The environment's token secret, `tg_ts_test_…` or `tg_ts_live_…`. Server side only. */
  tokenSecret: string;
  /** The project's id, `prj_…`. */
  projectId: string;
  /** Must be the token secret's environment. */
  environment: Environment;
  /** The user the token may read: 1–256 UTF-8 bytes, no control characters. */
  userId: string;
  /** Lifetime in seconds, 1–86 400 (default 3 600). */
  ttlSeconds?: number;
  /** When the token is minted, as a `Date` or milliseconds since the epoch (default: now). */
  now?: Date | number;
}

export interface CreateUserTokenOptions {
  /** Lifetime in seconds, 1–86 400 (default 3 600, server side). */
  ttlSeconds?: number;
}

/** A user token and when it expires; `createUserToken` and `mintUserToken` both answer one. */
export interface UserToken {
  /** `tg_ut_…`: send it as `X-Tollgate-User-Token` with a publishable key. */
  token: string;
  /** RFC 3339, whole seconds. */
  expiresAt: string;
}

/**
 * The user token a client built with a publishable key sends: the token itself, or a function
 * answering the current one (called before each call, so it can fetch a fresh token from your
 * server when the old one nears `expiresAt`).
 */
export type UserTokenSource = string | (() => string | Promise<string>);
