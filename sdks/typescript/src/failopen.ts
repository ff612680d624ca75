/**
 * The fail-open policy's local state. When the server cannot be reached, a product may prefer
 * to keep serving its users within a small, bounded budget rather than stop. This module is
 * that budget and the record of what it let through, so the usage can be reported once the
 * server is back (`flush`). It lives in the memory of one `Tollgate` instance: a process that
 * exits before flushing loses what it holds (read `pendingFailOpen()` to persist it yourself).
 */

import { TollgateError } from "./errors.js";
import type {
  CheckAnswer,
  CheckInput,
  CommitAnswer,
  CommitInput,
  Metadata,
  ReleaseAnswer,
  ReserveAnswer,
  ReserveInput,
  TrackAnswer,
  TrackInput,
} from "./types.js";

const HOUR_MS = 3_600_000;
/** Local reservation ids start with this, so commit/release know to stay local. */
export const LOCAL_RESERVATION_PREFIX = "local_";

/** Usage admitted while the server was unreachable, waiting to be reported by `flush()`. */
export interface PendingFailOpenUsage {
  /** The key `flush()` sends with its `track`, the same on every retry: it counts once. */
  idempotencyKey: string;
  userId: string;
  event: string;
  quantity: number;
  metadata?: Metadata;
  costMicros?: number;
  /** When the work happened (RFC 3339); sent as the track's `occurredAt`. */
  occurredAt: string;
  /** The `local_…` reservation it came from, or null for a `track` made while unreachable. */
  reservationId: string | null;
}

interface LocalReservation {
  userId: string;
  event: string;
  quantity: number;
  metadata?: Metadata;
  hour: number;
  createdAt: string;
  state: "pending" | "committed" | "released";
  commitAnswer?: CommitAnswer;
}

export class FailOpenLedger {
  private readonly unitsPerUserPerHour: number;
  /** Units spent per user in the current hour (keyed `hour:userId`). */
  private readonly spent = new Map<string, number>();
  private readonly reservations = new Map<string, LocalReservation>();
  private readonly pending: PendingFailOpenUsage[] = [];
  private sequence = 0;

  constructor(unitsPerUserPerHour: number) {
    this.unitsPerUserPerHour = unitsPerUserPerHour;
  }

  reserve(input: ReserveInput, newKey: () => string): ReserveAnswer {
    const quantity = input.quantity ?? 1;
    const hour = currentHour();
    if (!this.fits(input.userId, hour, quantity)) return denied();
    this.spend(input.userId, hour, quantity);
    this.sequence += 1;
    const reservationId = `${LOCAL_RESERVATION_PREFIX}${newKey()}_${this.sequence}`;
    this.reservations.set(reservationId, {
      userId: input.userId,
      event: input.event,
      quantity,
      metadata: input.metadata,
      hour,
      createdAt: new Date().toISOString(),
      state: "pending",
    });
    return { allowed: true, reservationId, failOpen: true, reasons: [], deniedBy: [], limits: [] };
  }

  check(input: CheckInput): CheckAnswer {
    const allowed = this.fits(input.userId, currentHour(), input.quantity ?? 1);
    return { allowed, failOpen: true, reasons: allowed ? [] : ["limit_reached"], deniedBy: [], limits: [] };
  }

  /** A track while unreachable: recorded locally (always, or within the budget if `enforce`). */
  track(input: TrackInput, idempotencyKey: string): TrackAnswer {
    const quantity = input.quantity ?? 1;
    const hour = currentHour();
    const allowed = this.fits(input.userId, hour, quantity);
    const recorded = allowed || input.enforce !== true;
    if (recorded) {
      this.spend(input.userId, hour, quantity);
      this.pending.push({
        idempotencyKey,
        userId: input.userId,
        event: input.event,
        quantity,
        metadata: input.metadata,
        costMicros: input.costMicros,
        occurredAt: input.occurredAt ?? new Date().toISOString(),
        reservationId: null,
      });
    }
    return {
      eventId: null,
      recorded,
      allowed,
      reasons: allowed ? [] : ["limit_reached"],
      matchStatus: "unknown",
      overage: 0,
      limits: [],
      failOpen: true,
    };
  }

  commit(reservationId: string, input: CommitInput, newKey: () => string): CommitAnswer {
    const reservation = this.find(reservationId);
    if (reservation.state === "committed" && reservation.commitAnswer !== undefined) {
      return reservation.commitAnswer;
    }
    if (reservation.state !== "pending") throw notPending(reservation.state);
    const quantity = input.quantity ?? reservation.quantity;
    if (reservation.hour === currentHour()) {
      this.spend(reservation.userId, reservation.hour, quantity - reservation.quantity);
    }
    const metadata =
      reservation.metadata === undefined && input.metadata === undefined
        ? undefined
        : { ...reservation.metadata, ...input.metadata };
    this.pending.push({
      idempotencyKey: newKey(),
      userId: reservation.userId,
      event: reservation.event,
      quantity,
      metadata,
      costMicros: input.costMicros,
      occurredAt: reservation.createdAt,
      reservationId,
    });
    reservation.state = "committed";
    reservation.commitAnswer = {
      reservationId,
      status: "committed",
      eventId: null,
      quantity,
      overage: 0,
      late: false,
      limits: [],
      failOpen: true,
    };
    return reservation.commitAnswer;
  }

  release(reservationId: string): ReleaseAnswer {
    const reservation = this.find(reservationId);
    if (reservation.state === "committed") throw notPending("committed");
    if (reservation.state === "pending" && reservation.hour === currentHour()) {
      this.spend(reservation.userId, reservation.hour, -reservation.quantity);
    }
    reservation.state = "released";
    return { reservationId, status: "released", limits: [], failOpen: true };
  }

  list(): PendingFailOpenUsage[] {
    return this.pending.map((entry) => ({ ...entry }));
  }

  /** Forgets one reported entry (by its idempotency key). */
  remove(idempotencyKey: string): void {
    const index = this.pending.findIndex((entry) => entry.idempotencyKey === idempotencyKey);
    if (index >= 0) this.pending.splice(index, 1);
  }

  private find(reservationId: string): LocalReservation {
    const reservation = this.reservations.get(reservationId);
    if (reservation === undefined) {
      throw new TollgateError({ code: "not_found", status: 404, message: "local reservation not found" });
    }
    return reservation;
  }

  private fits(userId: string, hour: number, quantity: number): boolean {
    return (this.spent.get(`${hour}:${userId}`) ?? 0) + quantity <= this.unitsPerUserPerHour;
  }

  private spend(userId: string, hour: number, units: number): void {
    const key = `${hour}:${userId}`;
    for (const old of this.spent.keys()) {
      if (!old.startsWith(`${hour}:`)) this.spent.delete(old);
    }
    this.spent.set(key, Math.max(0, (this.spent.get(key) ?? 0) + units));
  }
}

function currentHour(): number {
  return Math.floor(Date.now() / HOUR_MS);
}

function denied(): ReserveAnswer {
  return { allowed: false, reservationId: null, failOpen: true, reasons: ["limit_reached"], deniedBy: [], limits: [] };
}

function notPending(state: string): TollgateError {
  return new TollgateError({
    code: "reservation_not_pending",
    status: 409,
    message: `the local reservation is ${state} and no longer pending`,
    reservationStatus: state,
  });
}
