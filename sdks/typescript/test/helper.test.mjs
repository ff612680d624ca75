// withReservation: commit on success, release on a throw, QuotaExceededError when denied,
// extension while the work runs, and the fail-open path.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { QuotaExceededError, Tollgate } from "../dist/esm/index.js";
import { FIVE_IMAGES, deadUrl, sleep, startServer } from "./support.mjs";

let server;
let tg;

before(async () => {
  server = await startServer();
  await server.setPlans(FIVE_IMAGES);
  tg = new Tollgate({ baseUrl: server.url, secretKey: server.key });
});
after(async () => server?.stop());

const images = (answer) => answer.limits.find((limit) => limit.limitId === "images");

test("commits on success with the quantity the callback returns", async () => {
  let seen;
  const result = await tg.withReservation({ userId: "u_ok", event: "image.render", quantity: 3 }, async (reservation) => {
    seen = reservation;
    assert.equal(images(await tg.usage("u_ok")).reserved, 3, "held while the work runs");
    return { quantity: 2, costMicros: 500, metadata: { model: "m" } };
  });
  assert.match(seen.reservationId, /^rsv_/);
  assert.equal(result.commit.status, "committed");
  assert.equal(result.commit.quantity, 2);
  assert.deepEqual(result.value, { quantity: 2, costMicros: 500, metadata: { model: "m" } });
  const usage = await tg.usage("u_ok");
  assert.equal(images(usage).used, 2);
  assert.equal(images(usage).reserved, 0);
  const [event] = (await tg.events({ userId: "u_ok" })).events;
  assert.equal(event.costMicros, 500);
  assert.deepEqual(event.metadata, { model: "m" });
});

test("commits the quantity set on the handle, and returns the callback's value", async () => {
  const result = await tg.withReservation({ userId: "u_handle", event: "image.render", quantity: 2 }, async (reservation) => {
    reservation.quantity = 1;
    return "an image";
  });
  assert.equal(result.value, "an image");
  assert.equal(result.commit.quantity, 1);
  assert.equal(images(await tg.usage("u_handle")).used, 1);
});

test("releases on a throw and rethrows: 0 used, 0 reserved", async () => {
  class ProviderError extends Error {
    code = "provider_timeout";
  }
  let reservationId;
  await assert.rejects(
    tg.withReservation({ userId: "u_fail", event: "image.render", quantity: 2 }, async (reservation) => {
      reservationId = reservation.reservationId;
      throw new ProviderError("the provider timed out");
    }),
    (error) => error instanceof ProviderError && error.message === "the provider timed out",
  );
  const usage = await tg.usage("u_fail");
  assert.equal(images(usage).used, 0);
  assert.equal(images(usage).reserved, 0);
  assert.equal((await tg.getReservation(reservationId)).status, "released");
});

test("denied: throws QuotaExceededError with the answer and never runs the callback", async () => {
  await tg.track({ userId: "u_full", event: "image.render", quantity: 5 });
  let ran = false;
  const error = await tg
    .withReservation({ userId: "u_full", event: "image.render" }, async () => {
      ran = true;
    })
    .catch((caught) => caught);
  assert.ok(error instanceof QuotaExceededError);
  assert.equal(ran, false);
  assert.equal(error.answer.allowed, false);
  assert.deepEqual(error.answer.reasons, ["limit_reached"]);
  assert.deepEqual(error.answer.deniedBy, ["images"]);
  assert.equal(images(error.answer).used, 5);
});

test("extends the reservation while the work outlives half its TTL", async () => {
  let reservationId;
  const result = await tg.withReservation({ userId: "u_long", event: "image.render", ttlSeconds: 2 }, async (reservation) => {
    reservationId = reservation.reservationId;
    await sleep(2_600);
    const current = await tg.getReservation(reservationId);
    assert.equal(current.status, "pending", "still pending past the original TTL");
    return {};
  });
  assert.equal(result.commit.late, false, "committed in time thanks to the extensions");
  assert.equal(images(await tg.usage("u_long")).used, 1);
});

test("fail-open: runs the work on a local reservation and queues its usage", async () => {
  const offline = new Tollgate({
    baseUrl: await deadUrl(),
    secretKey: server.key,
    maxRetries: 0,
    onUnreachable: { failOpen: { unitsPerUserPerHour: 1 } },
  });
  const result = await offline.withReservation({ userId: "u_offline", event: "image.render" }, async () => ({ quantity: 1 }));
  assert.equal(result.commit.failOpen, true);
  assert.equal(offline.pendingFailOpen().length, 1);
  await assert.rejects(
    offline.withReservation({ userId: "u_offline", event: "image.render" }, async () => undefined),
    QuotaExceededError,
  );
});
