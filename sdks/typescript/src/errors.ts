/**
 * Typed errors. Every non-2xx answer of the server becomes a `TollgateError` carrying the
 * server's named `code`, so callers branch on codes, never on message text. A failure to get
 * any answer at all (connection refused or dropped, DNS, timeout) is a `TollgateNetworkError`:
 * the request may or may not have reached the server. An end user over quota is not an error
 * (`allowed: false`), except inside `withReservation`, which throws `QuotaExceededError` so the
 * gated work never starts.
 */

import type { ReserveAnswer } from "./types.js";

/** The server answered with an error body `{"error": {"code", "message", "field"?, "status"?}}`. */
export class TollgateError extends Error {
  /** The server's error code, e.g. `invalid_request`, `not_found`, `reservation_not_pending`. */
  readonly code: string;
  /** The HTTP status of the answer (400, 401, 404, 409, 503, ...). */
  readonly status: number;
  /** The request field at fault (`quantity`, `plans[0].limits[1].window`), when one is. */
  readonly field: string | undefined;
  /**
   * For `reservation_not_pending`: the reservation's state (`committed`, `released`,
   * `expired`). The server calls it `status`; here `status` is the HTTP status.
   */
  readonly reservationStatus: string | undefined;
  /** `Retry-After` in milliseconds, when the server sent one (429, 503). */
  readonly retryAfterMs: number | undefined;
  /** The `x-request-id` of the answer, to quote in a bug report. */
  readonly requestId: string | undefined;
  /** The whole `error` object as the server sent it. */
  readonly body: Record<string, unknown>;

  constructor(init: {
    code: string;
    status: number;
    message: string;
    field?: string;
    reservationStatus?: string;
    retryAfterMs?: number;
    requestId?: string;
    body?: Record<string, unknown>;
  }) {
    super(init.message);
    this.name = "TollgateError";
    this.code = init.code;
    this.status = init.status;
    this.field = init.field;
    this.reservationStatus = init.reservationStatus;
    this.retryAfterMs = init.retryAfterMs;
    this.requestId = init.requestId;
    this.body = init.body ?? {};
  }
}

/** No answer came back: connection refused or dropped, DNS failure, or `timeoutMs` passed. */
export class TollgateNetworkError extends Error {
  /** True when the request was abandoned because `timeoutMs` passed. */
  readonly timedOut: boolean;
  /** The underlying error thrown by `fetch`. */
  readonly cause: unknown;

  constructor(message: string, options: { cause?: unknown; timedOut?: boolean } = {}) {
    super(message);
    this.name = "TollgateNetworkError";
    this.cause = options.cause;
    this.timedOut = options.timedOut ?? false;
  }
}

/**
 * Thrown by `withReservation` when the reserve is denied: the callback never runs. `answer` is
 * the server's (or the fail-open policy's) full reserve answer, with `reasons` and `deniedBy`.
 */
export class QuotaExceededError extends Error {
  readonly code = "quota_exceeded";
  readonly answer: ReserveAnswer;

  constructor(answer: ReserveAnswer) {
    const why = answer.reasons.length > 0 ? answer.reasons.join(", ") : "denied";
    const by = answer.deniedBy.length > 0 ? ` by ${answer.deniedBy.join(", ")}` : "";
    super(`quota exceeded: ${why}${by}`);
    this.name = "QuotaExceededError";
    this.answer = answer;
  }
}
