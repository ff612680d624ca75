// Metering, the typed errors and every other method, against the real server.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Tollgate, TollgateError } from "../dist/esm/index.js";
import { FIVE_IMAGES, startServer } from "./support.mjs";

let server;
let tg;

before(async () => {
  server = await startServer();
  await server.setPlans({
    ...FIVE_IMAGES,
    plans: [...FIVE_IMAGES.plans, { id: "pro", limits: [{ id: "images", quota: 100, window: { type: "lifetime" }, match: [{ event: "image.*" }] }] }],
    creditPacks: [{ id: "pack10", items: [{ id: "imgs", quantity: 10, match: [{ event: "image.*" }] }] }],
  });
  tg = new Tollgate({ baseUrl: server.url, secretKey: server.key });
});
after(async () => server?.stop());

const images = (answer) => answer.limits.find((limit) => limit.limitId === "images");

describe("reserve, commit, release", () => {
  test("reserve → commit charges the final quantity", async () => {
    const reserved = await tg.reserve({ userId: "u_commit", event: "image.render", quantity: 2, metadata: { model: "m1" } });
    assert.equal(reserved.allowed, true);
    assert.match(reserved.reservationId, /^rsv_/);
    assert.equal(images(reserved).reserved, 2);
    assert.equal(images(reserved).remaining, 3);

    const committed = await tg.commit(reserved.reservationId, { quantity: 1, costMicros: 1200 });
    assert.equal(committed.status, "committed");
    assert.equal(committed.quantity, 1);
    assert.equal(committed.overage, 0);
    assert.equal(committed.late, false);
    assert.match(committed.eventId, /^evt_/);

    const usage = await tg.usage("u_commit");
    assert.equal(images(usage).used, 1);
    assert.equal(images(usage).reserved, 0);

    const reservation = await tg.getReservation(reserved.reservationId);
    assert.equal(reservation.status, "committed");
    assert.equal(reservation.quantity, 1);
    assert.equal(reservation.eventId, committed.eventId);
    assert.deepEqual(reservation.metadata, { model: "m1" });

    const again = await tg.commit(reserved.reservationId, { quantity: 4 });
    assert.equal(again.eventId, committed.eventId, "a repeated commit is idempotent");
    assert.equal(again.quantity, 1);
  });

  test("reserve → release gives the hold back", async () => {
    const reserved = await tg.reserve({ userId: "u_release", event: "image.render", quantity: 3 });
    assert.equal(images(reserved).reserved, 3);
    const released = await tg.release(reserved.reservationId, { reason: "provider_error", errorCode: "timeout" });
    assert.equal(released.status, "released");
    assert.equal(images(released).reserved, 0);
    const usage = await tg.usage("u_release", { event: "image.render" });
    assert.equal(images(usage).used, 0);
    assert.equal(images(usage).reserved, 0);
    assert.equal((await tg.getReservation(reserved.reservationId)).status, "released");
  });

  test("extend moves expiresAt", async () => {
    const reserved = await tg.reserve({ userId: "u_extend", event: "image.render", ttlSeconds: 5 });
    const extended = await tg.extend(reserved.reservationId, { ttlSeconds: 600 });
    assert.equal(extended.status, "pending");
    const gainMs = Date.parse(extended.expiresAt) - Date.parse(reserved.expiresAt);
    assert.ok(gainMs > 500_000, `expiresAt moved by ${gainMs} ms`);
  });

  test("a race of 50 parallel reserves against a quota of 5 admits exactly 5", async () => {
    const answers = await Promise.all(
      Array.from({ length: 50 }, () => tg.reserve({ userId: "u_race", event: "image.render", quantity: 1 })),
    );
    const allowed = answers.filter((answer) => answer.allowed);
    assert.equal(allowed.length, 5);
    assert.equal(new Set(allowed.map((answer) => answer.reservationId)).size, 5);
    for (const denied of answers.filter((answer) => !answer.allowed)) {
      assert.equal(denied.reservationId, null);
      assert.deepEqual(denied.reasons, ["limit_reached"]);
      assert.deepEqual(denied.deniedBy, ["images"]);
    }
    const usage = await tg.usage("u_race");
    assert.equal(images(usage).reserved, 5);
    assert.equal(images(usage).remaining, 0);
  });
});

describe("typed errors", () => {
  const rejects = async (promise, expected) => {
    const error = await promise.then(
      () => assert.fail("expected an error"),
      (caught) => caught,
    );
    assert.ok(error instanceof TollgateError, `a TollgateError, got ${error}`);
    for (const [key, value] of Object.entries(expected)) assert.equal(error[key], value, key);
    assert.equal(typeof error.message, "string");
    assert.ok(error.message.length > 0);
    return error;
  };

  test("401 invalid_key with a bad key", async () => {
    const bad = new Tollgate({ baseUrl: server.url, secretKey: "tg_sk_test_nope" });
    await rejects(bad.reserve({ userId: "u_e", event: "image.render" }), { status: 401, code: "invalid_key", field: undefined });
  });

  test("400 invalid_request naming the field for quantity -1", async () => {
    await rejects(tg.reserve({ userId: "u_e", event: "image.render", quantity: -1 }), {
      status: 400,
      code: "invalid_request",
      field: "quantity",
    });
  });

  test("404 not_found for an unknown reservation", async () => {
    await rejects(tg.commit("rsv_doesnotexist"), { status: 404, code: "not_found" });
    await rejects(tg.getReservation("rsv_doesnotexist"), { status: 404, code: "not_found" });
  });

  test("409 reservation_not_pending when settling a settled reservation", async () => {
    const committed = await tg.reserve({ userId: "u_409", event: "image.render" });
    await tg.commit(committed.reservationId);
    await rejects(tg.release(committed.reservationId), {
      status: 409,
      code: "reservation_not_pending",
      reservationStatus: "committed",
    });
    const released = await tg.reserve({ userId: "u_409", event: "image.render" });
    await tg.release(released.reservationId);
    await rejects(tg.commit(released.reservationId), {
      status: 409,
      code: "reservation_not_pending",
      reservationStatus: "released",
    });
  });
});

describe("the other methods", () => {
  test("track, check and events", async () => {
    const tracked = await tg.track({ userId: "u_track", event: "image.render", quantity: 2, metadata: { model: "m2" } });
    assert.equal(tracked.recorded, true);
    assert.equal(tracked.matchStatus, "matched");
    assert.equal(images(tracked).used, 2);

    const fits = await tg.check({ userId: "u_track", event: "image.render", quantity: 3 });
    assert.equal(fits.allowed, true);
    const over = await tg.check({ userId: "u_track", event: "image.render", quantity: 4 });
    assert.equal(over.allowed, false);
    assert.deepEqual(over.deniedBy, ["images"]);
    assert.equal(images(await tg.usage("u_track")).used, 2, "check changes nothing");

    const page = await tg.events({ userId: "u_track", status: "tracked", limit: 10 });
    assert.equal(page.events.length, 1);
    assert.equal(page.events[0].eventId, tracked.eventId);
    assert.equal(page.events[0].quantity, 2);
    assert.deepEqual(page.events[0].metadata, { model: "m2" });
    assert.equal(page.nextCursor, null);
  });

  test("track with the same idempotencyKey counts once", async () => {
    const first = await tg.track({ userId: "u_track_key", event: "image.render", idempotencyKey: "call-1" });
    const second = await tg.track({ userId: "u_track_key", event: "image.render", idempotencyKey: "call-1" });
    assert.equal(second.eventId, first.eventId);
    assert.equal(images(await tg.usage("u_track_key")).used, 1);
  });

  test("identify carries anonymous usage over", async () => {
    await tg.track({ userId: "anon_1", event: "image.render", quantity: 2 });
    const merged = await tg.identify({ anonymousId: "anon_1", userId: "u_identified" });
    assert.equal(merged.userId, "u_identified");
    assert.equal(merged.merged, true);
    assert.equal(images(await tg.usage("u_identified")).used, 2);
    assert.equal((await tg.identify({ anonymousId: "anon_1", userId: "u_identified" })).merged, false);
  });

  test("subscriptions: upsert, get, cancel", async () => {
    const created = await tg.upsertSubscription({ userId: "u_sub", planId: "pro" });
    assert.match(created.subscriptionId, /^sub_/);
    assert.equal(created.planId, "pro");
    assert.equal(created.changed, true);
    assert.equal((await tg.upsertSubscription({ userId: "u_sub", planId: "pro" })).changed, false);
    assert.equal(images(await tg.usage("u_sub")).quota, 100);

    const read = await tg.getSubscription("u_sub");
    assert.equal(read.subscriptionId, created.subscriptionId);

    const canceled = await tg.cancelSubscription({ userId: "u_sub", at: "now", reason: "test" });
    assert.equal(canceled.subscriptionId, created.subscriptionId);
    assert.equal(typeof canceled.endsAt, "string");
    assert.equal(images(await tg.usage("u_sub")).quota, 5, "back on the default plan");
    await assert.rejects(tg.getSubscription("u_never"), (error) => error instanceof TollgateError && error.status === 404);
  });

  test("credits: grant, balance, ledger, revoke", async () => {
    const granted = await tg.grantCredits({ userId: "u_credits", packId: "pack10", externalRef: "pi_1", note: "test" });
    assert.equal(granted.created, true);
    assert.equal(granted.grants.length, 1);
    assert.equal(granted.grants[0].quantity, 10);
    const repeat = await tg.grantCredits({ userId: "u_credits", packId: "pack10", externalRef: "pi_1" });
    assert.equal(repeat.created, false);
    assert.equal(repeat.grants[0].grantId, granted.grants[0].grantId);

    const balance = await tg.credits("u_credits");
    assert.equal(balance.packs.length, 1);
    assert.equal(balance.packs[0].available, 10);

    const ledger = await tg.creditLedger("u_credits", { limit: 10 });
    assert.equal(ledger.entries.length, 1);
    assert.equal(ledger.entries[0].type, "grant");
    assert.equal(ledger.entries[0].quantity, 10);

    const revoked = await tg.revokeCredits({ externalRef: "pi_1", reason: "refund" });
    assert.deepEqual(revoked.revoked, [{ grantId: granted.grants[0].grantId, quantity: 10 }]);
    assert.equal((await tg.credits("u_credits")).packs.reduce((sum, pack) => sum + pack.available, 0), 0);
  });
});
