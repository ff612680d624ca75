// mintUserToken's format, checked without a server: known-answer vectors shared with the Python
// SDK's tests, the payload decoded and the HMAC recomputed here with node:crypto, the input
// limits just inside and just outside; and the browser client's headers, through an injected fetch.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createRequire } from "node:module";
import { describe, test } from "node:test";
import { Tollgate, mintUserToken } from "../dist/esm/index.js";

const require = createRequire(import.meta.url);

// Known answers, computed apart from both SDKs (printf | base64 and `openssl dgst -sha256 -hmac`).
// The Python SDK's tests/test_user_token_format.py holds the same vectors: both must agree.
const VECTORS = [
  {
    input: {
      tokenSecret: "tg_ts_test_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
      projectId: "prj_2x8R",
      environment: "test",
      userId: "u_42",
      now: Date.parse("2026-01-01T00:00:00Z"),
    },
    token:
      "tg_ut_eyJ2IjoxLCJwcmoiOiJwcmpfMng4UiIsImVudiI6InRlc3QiLCJzdWIiOiJ1XzQyIiwiZXhwIjoxNzY3MjI5MjAwfQ" +
      ".Jjn3bV2cKh06pjA5EONvFJ7Cn4dXlbcn7EgKw71nQws",
    expiresAt: "2026-01-01T01:00:00Z",
  },
  {
    // Non-ASCII, a quote and a slash: the JSON escapes and the UTF-8 must agree too.
    input: {
      tokenSecret: "tg_ts_live___79_Pv6-fj39vX08_Lx8O_u7ezr6uno5-bl5OPi4eA",
      projectId: "prj_2x8R",
      environment: "live",
      userId: 'ü "quoted" 😀/é',
      ttlSeconds: 86_400,
      now: new Date("2026-01-01T00:00:00Z"),
    },
    token:
      "tg_ut_eyJ2IjoxLCJwcmoiOiJwcmpfMng4UiIsImVudiI6ImxpdmUiLCJzdWIiOiLDvCBcInF1b3RlZFwiIPCfmIAvw6kiLCJleHAiOjE3NjczMTIwMDB9" +
      ".M2E4ZFwr_wgVgTH7VX8ApeFCHZ7nFs8HZdTD350z4mM",
    expiresAt: "2026-01-02T00:00:00Z",
  },
];

const SECRET = VECTORS[0].input.tokenSecret;
const BASE = { tokenSecret: SECRET, projectId: "prj_2x8R", environment: "test", userId: "u_1" };

/** Splits a token into its signed part, payload and signature, and decodes the payload. */
function decode(token) {
  const dot = token.indexOf(".");
  const signed = token.slice(0, dot);
  const signature = token.slice(dot + 1);
  assert.ok(signed.startsWith("tg_ut_"), token);
  const payload = JSON.parse(Buffer.from(signed.slice("tg_ut_".length), "base64url").toString("utf8"));
  return { signed, signature, payload };
}

describe("the token format", () => {
  for (const [index, vector] of VECTORS.entries()) {
    test(`known-answer vector ${index + 1}`, () => {
      assert.deepEqual(mintUserToken(vector.input), { token: vector.token, expiresAt: vector.expiresAt });
      assert.equal(require("../dist/cjs/index.js").mintUserToken(vector.input).token, vector.token, "the CommonJS build");
    });
  }

  test("the payload carries v, prj, env, sub and exp, and the HMAC is the secret's over the signed part", () => {
    const now = Date.parse("2026-03-04T05:06:07.890Z");
    const { token, expiresAt } = mintUserToken({ ...BASE, userId: "u_format", ttlSeconds: 90, now });
    assert.match(token, /^tg_ut_[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$/, "base64url without padding");
    const { signed, signature, payload } = decode(token);
    const exp = Math.floor(now / 1000) + 90;
    assert.deepEqual(payload, { v: 1, prj: "prj_2x8R", env: "test", sub: "u_format", exp });
    assert.equal(signature, createHmac("sha256", Buffer.from(SECRET, "utf8")).update(signed, "utf8").digest("base64url"));
    assert.equal(expiresAt, new Date(exp * 1000).toISOString().replace(".000Z", "Z"));
  });

  test("ttlSeconds defaults to 3600 and now to the current time", () => {
    const before = Math.floor(Date.now() / 1000);
    const { payload } = decode(mintUserToken(BASE).token);
    const after = Math.floor(Date.now() / 1000);
    assert.ok(payload.exp >= before + 3600 && payload.exp <= after + 3600, `exp ${payload.exp}`);
  });
});

describe("the inputs mintUserToken refuses", () => {
  const refuses = (input, pattern) => assert.throws(() => mintUserToken({ ...BASE, ...input }), (error) => {
    assert.ok(error instanceof TypeError, String(error));
    assert.match(error.message, pattern);
    assert.ok(!error.message.includes(SECRET.slice(11)), "the secret is never quoted");
    return true;
  });

  test("ttlSeconds: 1 and 86400 pass; 0, 86401, a fraction and a string do not", () => {
    assert.equal(decode(mintUserToken({ ...BASE, ttlSeconds: 1, now: 0 }).token).payload.exp, 1);
    assert.equal(decode(mintUserToken({ ...BASE, ttlSeconds: 86_400, now: 0 }).token).payload.exp, 86_400);
    for (const ttlSeconds of [0, 86_401, 1.5, -1, Number.NaN, "60"]) refuses({ ttlSeconds }, /ttlSeconds/);
  });

  test("userId: 256 bytes pass; empty, 257 bytes, control characters and lone surrogates do not", () => {
    assert.equal(decode(mintUserToken({ ...BASE, userId: "é".repeat(128) }).token).payload.sub, "é".repeat(128));
    assert.equal(decode(mintUserToken({ ...BASE, userId: "a".repeat(256) }).token).payload.sub.length, 256);
    refuses({ userId: "" }, /userId.*1–256 UTF-8 bytes/);
    refuses({ userId: "a".repeat(257) }, /userId.*257/);
    refuses({ userId: `${"é".repeat(128)}a` }, /userId.*257/);
    for (const userId of ["a\nb", "tab\there", "del\u007f", "c1\u0085"]) refuses({ userId }, /control characters/);
    refuses({ userId: "half\ud83d" }, /lone surrogate/);
    refuses({ userId: 42 }, /userId/);
  });

  test("environment is test or live, and the secret's own", () => {
    refuses({ environment: "prod" }, /environment/);
    refuses({ environment: "live" }, /test environment's secret but `environment` is "live"/);
    refuses({ tokenSecret: VECTORS[1].input.tokenSecret }, /live environment's secret but `environment` is "test"/);
  });

  test("tokenSecret must be a whole token secret", () => {
    for (const tokenSecret of [undefined, "", SECRET.slice(0, -1), `${SECRET}A`, SECRET.replace("tg_ts_", "tg_sk_"), `${SECRET.slice(0, -1)}+`]) {
      refuses({ tokenSecret }, /tokenSecret.*tg_ts_test_/);
    }
  });

  test("projectId must be a prj_ id, now a valid time, and the token at most 1024 bytes", () => {
    for (const projectId of ["", "prj_", "project", 7]) refuses({ projectId }, /projectId/);
    refuses({ now: new Date("not a date") }, /now/);
    assert.ok(mintUserToken({ ...BASE, projectId: `prj_${"x".repeat(400)}` }).token.length <= 1024);
    refuses({ projectId: `prj_${"x".repeat(800)}` }, /over the server's 1024/);
  });
});

describe("a client with a publishable key and a user token", () => {
  /** A client whose fetch records the requests and answers `answer`. */
  function recording(options) {
    const requests = [];
    const client = new Tollgate({
      baseUrl: "http://127.0.0.1:1",
      fetch: async (url, init) => {
        requests.push({ url, headers: init.headers });
        return new Response(JSON.stringify({ userId: "u_1", limits: [] }), { status: 200 });
      },
      ...options,
    });
    return { client, requests };
  }

  test("meUsage and meCredits send the publishable key and X-Tollgate-User-Token", async () => {
    const { client, requests } = recording({ publishableKey: "tg_pk_test_abc", userToken: "tg_ut_x.y" });
    await client.meUsage({ event: "image.render" });
    await client.meCredits();
    assert.deepEqual(requests.map((r) => r.url), ["http://127.0.0.1:1/v1/me/usage?event=image.render", "http://127.0.0.1:1/v1/me/credits"]);
    for (const { headers } of requests) {
      assert.equal(headers.authorization, "Bearer tg_pk_test_abc");
      assert.equal(headers["x-tollgate-user-token"], "tg_ut_x.y");
    }
  });

  test("with a secret key too, the me routes still send the publishable key; the rest the secret key", async () => {
    const { client, requests } = recording({ secretKey: "tg_sk_test_s", publishableKey: "tg_pk_test_p", userToken: "tg_ut_t" });
    await client.meUsage();
    await client.usage("u_1");
    assert.equal(requests[0].headers.authorization, "Bearer tg_pk_test_p");
    assert.equal(requests[1].headers.authorization, "Bearer tg_sk_test_s");
    assert.equal(requests[1].headers["x-tollgate-user-token"], undefined);
  });

  test("a userToken function is asked before every call", async () => {
    let calls = 0;
    const { client, requests } = recording({ publishableKey: "tg_pk_test_p", userToken: async () => `tg_ut_${++calls}` });
    await client.meUsage();
    await client.meUsage();
    assert.deepEqual(requests.map((r) => r.headers["x-tollgate-user-token"]), ["tg_ut_1", "tg_ut_2"]);
  });

  test("refused locally: no key at all, a publishable key that is not one, a me call without a token", async () => {
    assert.throws(() => new Tollgate({ baseUrl: "http://x" }), /secretKey.*publishableKey/);
    assert.throws(() => new Tollgate({ baseUrl: "http://x", publishableKey: "tg_sk_test_oops" }), /publishableKey.*tg_pk_/);
    const { client, requests } = recording({ publishableKey: "tg_pk_test_p" });
    await assert.rejects(client.meUsage(), /meUsage needs `publishableKey` and `userToken`/);
    const secretOnly = recording({ secretKey: "tg_sk_test_s" }).client;
    await assert.rejects(secretOnly.meCredits(), /meCredits needs/);
    const empty = recording({ publishableKey: "tg_pk_test_p", userToken: () => "" }).client;
    await assert.rejects(empty.meUsage(), /answered no token/);
    assert.equal(requests.length, 0);
  });
});
