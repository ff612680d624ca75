// Retries with automatic idempotency keys, and the unreachable-server policy, through a proxy
// in front of the real server that loses answers or plays dead.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Tollgate, TollgateError, TollgateNetworkError } from "../dist/esm/index.js";
import { FIVE_IMAGES, deadUrl, startProxy, startServer } from "./support.mjs";

let server;
const proxies = [];

before(async () => {
  server = await startServer();
  await server.setPlans(FIVE_IMAGES);
});
after(async () => {
  for (const proxy of proxies) await proxy.stop();
  await server?.stop();
});

async function proxy(decide) {
  const started = await startProxy(server.url, decide);
  proxies.push(started);
  return started;
}

const images = (answer) => answer.limits.find((limit) => limit.limitId === "images");
const direct = () => new Tollgate({ baseUrl: server.url, secretKey: server.key });

describe("retries", () => {
  test("a reserve whose answer was lost is retried with the same key and counts once", async () => {
    const lossy = await proxy(({ path, count }) => (path === "/v1/reserve" && count === 1 ? "forward-then-drop" : "forward"));
    const tg = new Tollgate({ baseUrl: lossy.url, secretKey: server.key, maxRetries: 2 });
    const answer = await tg.reserve({ userId: "u_dropped", event: "image.render" });
    assert.equal(answer.allowed, true);

    const reserves = lossy.requests.filter((request) => request.path === "/v1/reserve");
    assert.equal(reserves.length, 2, "the first answer was lost, so it was sent twice");
    const keys = reserves.map((request) => request.headers["idempotency-key"]);
    assert.ok(keys[0], "an Idempotency-Key was generated");
    assert.equal(keys[1], keys[0], "the retry reused the key");

    const usage = await direct().usage("u_dropped");
    assert.equal(images(usage).reserved, 1, "held once, not twice");
    await tg.commit(answer.reservationId);
    assert.equal(images(await direct().usage("u_dropped")).used, 1);
  });

  test("a track whose answer was lost counts once", async () => {
    const lossy = await proxy(({ path, count }) => (path === "/v1/track" && count === 1 ? "forward-then-drop" : "forward"));
    const tg = new Tollgate({ baseUrl: lossy.url, secretKey: server.key });
    const answer = await tg.track({ userId: "u_dropped_track", event: "image.render", quantity: 2 });
    assert.equal(answer.recorded, true);
    assert.equal(lossy.requests.length, 2);
    assert.equal(images(await direct().usage("u_dropped_track")).used, 2);
  });

  test("separate calls get separate keys", async () => {
    const seen = await proxy(() => "forward");
    const tg = new Tollgate({ baseUrl: seen.url, secretKey: server.key });
    await tg.reserve({ userId: "u_keys", event: "image.render" });
    await tg.reserve({ userId: "u_keys", event: "image.render" });
    const [first, second] = seen.requests.map((request) => request.headers["idempotency-key"]);
    assert.notEqual(first, second);
    assert.equal(images(await direct().usage("u_keys")).reserved, 2);
  });

  test("a 503 is retried after its Retry-After, and surfaces as a typed error when retries run out", async () => {
    const busy = await proxy(({ count }) => (count === 1 ? "unavailable" : "forward"));
    const tg = new Tollgate({ baseUrl: busy.url, secretKey: server.key });
    const started = Date.now();
    const answer = await tg.reserve({ userId: "u_busy", event: "image.render" });
    assert.equal(answer.allowed, true);
    assert.ok(Date.now() - started >= 1_000, "waited the Retry-After of 1 s");
    assert.equal(busy.requests.length, 2);

    const always = await proxy(() => "unavailable");
    const noRetry = new Tollgate({ baseUrl: always.url, secretKey: server.key, maxRetries: 0 });
    const error = await noRetry.usage("u_busy").catch((caught) => caught);
    assert.ok(error instanceof TollgateError);
    assert.equal(error.status, 503);
    assert.equal(error.code, "unavailable");
    assert.equal(error.retryAfterMs, 1_000);
    assert.equal(always.requests.length, 1);
  });

  test("gives up after maxRetries with a TollgateNetworkError", async () => {
    const down = await proxy(() => "drop");
    const tg = new Tollgate({ baseUrl: down.url, secretKey: server.key, maxRetries: 2 });
    await assert.rejects(tg.usage("u_x"), TollgateNetworkError);
    assert.equal(down.requests.length, 3, "one attempt and two retries");
  });

  test("a timeout is a TollgateNetworkError with timedOut", async () => {
    const tg = new Tollgate({
      baseUrl: server.url,
      secretKey: server.key,
      timeoutMs: 50,
      maxRetries: 0,
      fetch: (url, init) =>
        new Promise((_resolve, reject) => init.signal.addEventListener("abort", () => reject(new Error("aborted")))),
    });
    const error = await tg.usage("u_x").catch((caught) => caught);
    assert.ok(error instanceof TollgateNetworkError);
    assert.equal(error.timedOut, true);
  });
});

describe("unreachable policy", () => {
  test("closed (the default): reserve, check and track throw the network error", async () => {
    const tg = new Tollgate({ baseUrl: await deadUrl(), secretKey: server.key, maxRetries: 1 });
    await assert.rejects(tg.reserve({ userId: "u_closed", event: "image.render" }), TollgateNetworkError);
    await assert.rejects(tg.check({ userId: "u_closed", event: "image.render" }), TollgateNetworkError);
    await assert.rejects(tg.track({ userId: "u_closed", event: "image.render" }), TollgateNetworkError);
    assert.deepEqual(tg.pendingFailOpen(), []);
  });

  test("fail-open admits within the hourly budget, denies past it, and flush tracks the units once", async () => {
    let reachable = false;
    const gate = await proxy(() => (reachable ? "forward" : "drop"));
    const tg = new Tollgate({
      baseUrl: gate.url,
      secretKey: server.key,
      maxRetries: 1,
      onUnreachable: { failOpen: { unitsPerUserPerHour: 3 } },
    });

    const first = await tg.reserve({ userId: "u_open", event: "image.render", quantity: 2 });
    assert.equal(first.allowed, true);
    assert.equal(first.failOpen, true);
    assert.match(first.reservationId, /^local_/);
    assert.deepEqual(first.limits, []);
    const second = await tg.reserve({ userId: "u_open", event: "image.render" });
    assert.equal(second.allowed, true);
    const third = await tg.reserve({ userId: "u_open", event: "image.render" });
    assert.equal(third.allowed, false, "the budget of 3 is spent");
    assert.equal(third.failOpen, true);
    assert.equal(third.reservationId, null);
    const otherUser = await tg.reserve({ userId: "u_open_2", event: "image.render" });
    assert.equal(otherUser.allowed, true, "the budget is per user");
    await tg.release(otherUser.reservationId);

    const committed = await tg.commit(first.reservationId);
    assert.equal(committed.failOpen, true);
    assert.equal(committed.quantity, 2);
    await tg.commit(second.reservationId, { quantity: 1 });
    const pending = tg.pendingFailOpen();
    assert.deepEqual(
      pending.map((entry) => [entry.userId, entry.event, entry.quantity]),
      [
        ["u_open", "image.render", 2],
        ["u_open", "image.render", 1],
      ],
    );

    // Still down: flush fails and keeps everything.
    await assert.rejects(tg.flush(), TollgateNetworkError);
    assert.equal(tg.pendingFailOpen().length, 2);

    // Back up: flush reports each committed unit as a track.
    reachable = true;
    const flusher = direct();
    const flushed = await tg.flush();
    assert.equal(flushed.tracked.length, 2);
    assert.equal(flushed.remaining, 0);
    assert.deepEqual(tg.pendingFailOpen(), []);
    assert.equal(images(await flusher.usage("u_open")).used, 3);
    assert.equal(images(await flusher.usage("u_open_2")).used, 0, "a released local reservation reports nothing");
    assert.equal((await tg.flush()).tracked.length, 0, "a second flush reports nothing");
    assert.equal(images(await flusher.usage("u_open")).used, 3);
  });

  test("a flush whose answer was lost counts once", async () => {
    let mode = "down";
    let tracks = 0;
    const gate = await proxy(({ path }) => {
      if (mode === "down") return "drop";
      if (path === "/v1/track") tracks += 1;
      return path === "/v1/track" && tracks === 1 ? "forward-then-drop" : "forward";
    });
    const tg = new Tollgate({
      baseUrl: gate.url,
      secretKey: server.key,
      maxRetries: 0,
      onUnreachable: { failOpen: { unitsPerUserPerHour: 10 } },
    });
    const tracked = await tg.track({ userId: "u_flush_once", event: "image.render", quantity: 4 });
    assert.equal(tracked.failOpen, true);
    assert.equal(tracked.recorded, true);
    mode = "up";
    // The first flush's track lands but its answer is lost (no retries here): the flush throws.
    await assert.rejects(tg.flush(), TollgateNetworkError);
    assert.equal(tg.pendingFailOpen().length, 1);
    // The next flush sends the same key again: the server replays, nothing is counted twice.
    const flushed = await tg.flush();
    assert.equal(flushed.tracked.length, 1);
    const keys = gate.requests.filter((request) => request.path === "/v1/track").map((r) => r.headers["idempotency-key"]);
    assert.equal(new Set(keys).size, 1, "every attempt carried the same key");
    assert.equal(images(await direct().usage("u_flush_once")).used, 4);
  });
});
