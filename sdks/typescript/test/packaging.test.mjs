// The package works both ways it is loaded: ES modules and CommonJS, through its exports map.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";
import * as esm from "../dist/esm/index.js";

const require = createRequire(import.meta.url);

test("CommonJS and ES module builds export the same surface", () => {
  const cjs = require("../dist/cjs/index.js");
  const names = ["QuotaExceededError", "Tollgate", "TollgateError", "TollgateNetworkError", "mintUserToken"];
  assert.deepEqual(Object.keys(cjs).filter((name) => names.includes(name)).sort(), names);
  assert.deepEqual(Object.keys(esm).sort(), names);
  const client = new cjs.Tollgate({ baseUrl: "http://127.0.0.1:1", secretKey: "tg_sk_test_x" });
  for (const method of ["reserve", "commit", "release", "extend", "getReservation", "track", "check", "usage", "events",
    "identify", "upsertSubscription", "cancelSubscription", "getSubscription", "grantCredits", "revokeCredits",
    "credits", "creditLedger", "createUserToken", "meUsage", "meCredits", "withReservation", "pendingFailOpen", "flush"]) {
    assert.equal(typeof client[method], "function", method);
  }
});

test("the exports map points at files that exist, with types for both", () => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  const root = pkg.exports["."];
  for (const path of [root.import.default, root.import.types, root.require.default, root.require.types]) {
    assert.ok(readFileSync(new URL(`../${path}`, import.meta.url)).length > 0, path);
  }
  const marker = JSON.parse(readFileSync(new URL("../dist/cjs/package.json", import.meta.url), "utf8"));
  assert.deepEqual(marker, { type: "commonjs" });
});

test("the ES module build imports no Node built-in, so browsers and edge runtimes can load it", () => {
  const dir = new URL("../dist/esm/", import.meta.url);
  const files = readdirSync(dir).filter((name) => name.endsWith(".js"));
  assert.ok(files.includes("usertoken.js"), files.join(", "));
  for (const name of files) {
    const text = readFileSync(new URL(name, dir), "utf8");
    assert.doesNotMatch(text, /(from|import\()\s*["'](node:)?(crypto|fs|buffer|module)["']/, name);
  }
});

test("the constructor refuses missing or bad options", () => {
  assert.throws(() => new esm.Tollgate({ secretKey: "k" }), /baseUrl/);
  assert.throws(() => new esm.Tollgate({ baseUrl: "http://x" }), /secretKey/);
  assert.throws(() => new esm.Tollgate({ baseUrl: "http://x", secretKey: "k", maxRetries: -1 }), /maxRetries/);
  assert.throws(
    () => new esm.Tollgate({ baseUrl: "http://x", secretKey: "k", onUnreachable: { failOpen: {} } }),
    /onUnreachable/,
  );
});

test("a 2xx answer that is not JSON is a typed invalid_response error", async () => {
  const client = new esm.Tollgate({
    baseUrl: "http://127.0.0.1:1",
    secretKey: "tg_sk_test_x",
    fetch: async () => new Response("<html>hello</html>", { status: 200 }),
  });
  const error = await client.usage("u").catch((caught) => caught);
  assert.ok(error instanceof esm.TollgateError);
  assert.equal(error.code, "invalid_response");
  assert.equal(error.status, 200);
});
