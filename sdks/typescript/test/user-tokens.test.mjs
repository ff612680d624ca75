// User tokens against the real server: tokens minted offline from GET /v1/settings and tokens from
// createUserToken read their own user's usage and credits with the publishable key; expired,
// altered, forged and misplaced tokens are refused with the contract's codes.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Tollgate, TollgateError, mintUserToken } from "../dist/esm/index.js";
import { FIVE_IMAGES, startServer } from "./support.mjs";

let server;
let tg;
let settings;

const USER_A = "u_token_a";
const USER_B = "u_token_b";

before(async () => {
  server = await startServer();
  await server.setPlans({
    ...FIVE_IMAGES,
    creditPacks: [{ id: "pack10", items: [{ id: "imgs", quantity: 10, match: [{ event: "image.*" }] }] }],
  });
  settings = await server.call("GET", "/v1/settings");
  tg = new Tollgate({ baseUrl: server.url, secretKey: server.key });
  // Different usage for A and B, so an answer shows whose it is.
  await tg.track({ userId: USER_A, event: "image.render", quantity: 2 });
  await tg.track({ userId: USER_B, event: "image.render", quantity: 4 });
  await tg.grantCredits({ userId: USER_A, packId: "pack10" });
});
after(async () => server?.stop());

const images = (answer) => answer.limits.find((limit) => limit.limitId === "images");

/** A browser's client: the publishable key and a user token, nothing else. */
const browser = (userToken, publishableKey = server.keys.test.publishable) =>
  new Tollgate({ baseUrl: server.url, publishableKey, userToken, maxRetries: 0 });

/** A token minted offline from the settings' three values. */
const mint = (userId, extra = {}) =>
  mintUserToken({
    tokenSecret: settings.tokenSecret,
    projectId: settings.projectId,
    environment: settings.environment,
    userId,
    ...extra,
  }).token;

/** Asserts the promise rejects with a TollgateError of this status and code. */
async function refused(promise, status, code) {
  const error = await promise.then(
    (answer) => assert.fail(`expected ${status} ${code}, got ${JSON.stringify(answer)}`),
    (caught) => caught,
  );
  assert.ok(error instanceof TollgateError, `a TollgateError, got ${error}`);
  assert.equal(error.status, status, error.message);
  assert.equal(error.code, code, error.message);
}

/** Replaces the character at `index` by another base64url character. */
function alter(token, index) {
  const replacement = token[index] === "A" ? "B" : "A";
  return token.slice(0, index) + replacement + token.slice(index + 1);
}

describe("tokens that are accepted", () => {
  test("GET /v1/settings gives what mintUserToken needs", () => {
    assert.match(settings.tokenSecret, /^tg_ts_test_[A-Za-z0-9_-]{43}$/);
    assert.match(settings.projectId, /^prj_/);
    assert.equal(settings.environment, "test");
  });

  test("a token minted offline reads its user's usage and credits, as the secret routes answer them", async () => {
    const client = browser(mint(USER_A));
    const usage = await client.meUsage();
    assert.equal(usage.userId, USER_A);
    assert.equal(images(usage).used, 2);
    assert.deepEqual(usage, await tg.usage(USER_A));
    assert.deepEqual(await client.meUsage({ event: "image.render" }), await tg.usage(USER_A, { event: "image.render" }));
    const credits = await client.meCredits();
    assert.equal(credits.userId, USER_A);
    assert.equal(credits.packs[0].available, 10);
    assert.deepEqual(credits, await tg.credits(USER_A));
  });

  test("createUserToken answers a token the server accepts, expiring ttlSeconds from now", async () => {
    const before = Date.now();
    const created = await tg.createUserToken(USER_A, { ttlSeconds: 120 });
    const expiresMs = Date.parse(created.expiresAt);
    assert.ok(expiresMs >= Math.floor(before / 1000) * 1000 + 120_000 && expiresMs <= Date.now() + 121_000, created.expiresAt);
    const payload = JSON.parse(Buffer.from(created.token.slice("tg_ut_".length).split(".")[0], "base64url").toString("utf8"));
    assert.deepEqual(payload, { v: 1, prj: settings.projectId, env: "test", sub: USER_A, exp: expiresMs / 1000 });
    assert.equal(images(await browser(created.token).meUsage()).used, 2);

    const byDefault = await tg.createUserToken(USER_B);
    const lifetime = Date.parse(byDefault.expiresAt) - Date.now();
    assert.ok(lifetime > 3_590_000 && lifetime <= 3_600_000, `default lifetime ${lifetime} ms`);
    assert.equal((await browser(byDefault.token).meUsage()).userId, USER_B);
  });

  test("createUserToken's ttlSeconds: 86400 passes, 0 and 86401 are 400 invalid_request", async () => {
    await tg.createUserToken(USER_A, { ttlSeconds: 86_400 });
    for (const ttlSeconds of [0, 86_401]) {
      const error = await tg.createUserToken(USER_A, { ttlSeconds }).catch((caught) => caught);
      assert.ok(error instanceof TollgateError, String(error));
      assert.equal(error.status, 400);
      assert.equal(error.code, "invalid_request");
      assert.equal(error.field, "ttlSeconds");
    }
  });

  test("a browser's preflight allows every header meUsage sends, and the answer names the origin", async () => {
    const origin = "http://127.0.0.1:5173";
    await server.call("PATCH", "/v1/settings", { corsOrigins: [origin] });
    // What the browser would send: the SDK's own headers, with the Origin the browser adds.
    const sent = [];
    const client = new Tollgate({
      baseUrl: server.url,
      publishableKey: server.keys.test.publishable,
      userToken: mint(USER_A),
      fetch: (url, init) => {
        sent.push(init.headers);
        return fetch(url, { ...init, headers: { ...init.headers, origin } });
      },
    });
    assert.equal((await client.meUsage()).userId, USER_A);
    const safelisted = new Set(["accept", "accept-language", "content-language"]);
    const needed = Object.keys(sent[0]).filter((name) => !safelisted.has(name));
    assert.deepEqual(needed.sort(), ["authorization", "x-tollgate-user-token"]);
    const preflight = await fetch(`${server.url}/v1/me/usage`, {
      method: "OPTIONS",
      headers: { origin, "access-control-request-method": "GET", "access-control-request-headers": needed.join(",") },
    });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get("access-control-allow-origin"), origin);
    const allowed = preflight.headers.get("access-control-allow-headers").split(",").map((name) => name.trim().toLowerCase());
    for (const name of needed) assert.ok(allowed.includes(name), `${name} in ${allowed}`);
    const answer = await fetch(`${server.url}/v1/me/usage`, { headers: { ...sent[0], origin } });
    assert.equal(answer.headers.get("access-control-allow-origin"), origin);
  });

  test("a token of the live environment works with the live publishable key", async () => {
    const live = await fetch(`${server.url}/v1/settings`, { headers: { authorization: `Bearer ${server.keys.live.secret}` } }).then((r) => r.json());
    assert.equal(live.environment, "live");
    assert.equal(live.projectId, settings.projectId);
    const token = mintUserToken({ tokenSecret: live.tokenSecret, projectId: live.projectId, environment: "live", userId: USER_A }).token;
    assert.equal((await browser(token, server.keys.live.publishable).meUsage()).userId, USER_A);
    await refused(browser(token).meUsage(), 403, "forbidden");
  });
});

describe("tokens that are refused", () => {
  test("a token for user A never reads user B", async () => {
    const tokenA = mint(USER_A);
    const usage = await browser(tokenA).meUsage();
    assert.equal(usage.userId, USER_A);
    assert.equal(images(usage).used, 2, "A's usage, not B's 4");
    // No parameter names another user: one that tries is ignored or refused, never obeyed.
    const probe = await fetch(`${server.url}/v1/me/usage?userId=${USER_B}`, {
      headers: { authorization: `Bearer ${server.keys.test.publishable}`, "x-tollgate-user-token": tokenA },
    });
    const body = await probe.json();
    if (probe.ok) assert.equal(body.userId, USER_A);
    else assert.ok(probe.status >= 400 && probe.status < 500, `${probe.status}`);
    // B's own route needs the secret key, whatever token comes with the publishable key.
    const direct = await fetch(`${server.url}/v1/users/${USER_B}/usage`, {
      headers: { authorization: `Bearer ${server.keys.test.publishable}`, "x-tollgate-user-token": tokenA },
    });
    assert.equal(direct.status, 403);
  });

  test("an expired token is 401 invalid_key", async () => {
    const expired = mint(USER_A, { ttlSeconds: 60, now: Date.now() - 2 * 3600 * 1000 });
    await refused(browser(expired).meUsage(), 401, "invalid_key");
    await refused(browser(expired).meCredits(), 401, "invalid_key");
  });

  test("a token with one character altered, in the payload or in the signature, is 401 invalid_key", async () => {
    const token = mint(USER_A);
    const dot = token.indexOf(".");
    await refused(browser(alter(token, Math.floor((6 + dot) / 2))).meUsage(), 401, "invalid_key");
    await refused(browser(alter(token, dot + 20)).meUsage(), 401, "invalid_key");
  });

  test("A's signature on a payload naming B is 401 invalid_key", async () => {
    const [, signature] = mint(USER_A).split(".");
    const [forgedSigned] = mint(USER_B).split(".");
    await refused(browser(`${forgedSigned}.${signature}`).meUsage(), 401, "invalid_key");
  });

  test("a test token with the live publishable key is 403 forbidden", async () => {
    await refused(browser(mint(USER_A), server.keys.live.publishable).meUsage(), 403, "forbidden");
  });

  test("a token for another project is 403 forbidden", async () => {
    await refused(browser(mint(USER_A, { projectId: "prj_someoneelse" })).meUsage(), 403, "forbidden");
  });

  test("no token, or something else in its place, is 401 invalid_key", async () => {
    const bare = await fetch(`${server.url}/v1/me/usage`, { headers: { authorization: `Bearer ${server.keys.test.publishable}` } });
    assert.equal(bare.status, 401);
    assert.equal((await bare.json()).error.code, "invalid_key");
    await refused(browser("tg_ut_not-a-token").meUsage(), 401, "invalid_key");
  });
});
