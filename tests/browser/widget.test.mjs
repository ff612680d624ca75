// The widget (crates/server/assets/widget.js, served as GET /widget.js) in a real headless
// Chromium, in the page of examples/widget, against a real `tollgate serve`: what a person
// using the example app sees, and what the browser is and is not allowed to read (API.md §12).
// Nothing is mocked. Run by scripts/test-browser.sh, which installs playwright-core and checks
// for Chromium; it needs TOLLGATE_BIN, a built tollgate binary.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, mkdir, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const BIN = process.env.TOLLGATE_BIN;
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const ARTIFACTS = path.join(REPO, "target", "browser-artifacts");
// How long a process may take to say it is ready, and the page to show what it should.
const STARTUP_TIMEOUT_MS = 30_000;
const SETTLE_TIMEOUT_MS = 10_000;

const DAILY_QUOTA = 5;
const PLAN_DOCUMENT = {
  defaultPlan: "free",
  plans: [
    {
      id: "free",
      name: "Free",
      description: "Try it out",
      price: { amount: 0, currency: "usd", interval: "month" },
      features: ["5 images a day"],
      limits: [
        {
          id: "images_daily",
          label: "Images per day",
          quota: DAILY_QUOTA,
          window: { type: "calendar", period: "day", timezone: "UTC" },
          match: [{ event: "image.render" }],
        },
        {
          id: "renders_parallel",
          label: "Parallel renders",
          kind: "concurrency",
          quota: 2,
          window: { type: "lifetime" },
          match: [{ event: "image.render" }],
        },
      ],
    },
    {
      // Markup in a plan name must show as text, never become elements.
      id: "pro",
      name: "Pro <em>plus</em>",
      price: { amount: 1900, currency: "usd", interval: "month" },
      features: ["500 images a day"],
      stripePriceIds: ["price_pro_monthly"],
      limits: [
        {
          id: "images_daily",
          label: "Images per day",
          quota: 500,
          window: { type: "calendar", period: "day", timezone: "UTC" },
          match: [{ event: "image.render" }],
        },
      ],
    },
    {
      id: "internal",
      name: "Internal",
      public: false,
      limits: [
        {
          id: "images_daily",
          quota: 100000,
          window: { type: "calendar", period: "day", timezone: "UTC" },
          match: [{ event: "image.render" }],
        },
      ],
    },
  ],
};

const processes = [];
const consoleLines = [];
const pageErrors = [];
let dataDir;
let keys; // the answer of `tollgate init --json`
let tollgateUrl;
let appUrl; // the example app: its origin is in corsOrigins
let strangerUrl; // the same page from an origin that is not
let stranger;
let browser;
let context;
let page; // the example app's page, shared by the tests in order
let userToken; // the token the app put in the page

// ------------------------------------------------------------------------------ helpers

// Starts a process whose output is kept (and saved to ARTIFACTS/<name>.log at the end).
function start(name, command, args, env = {}) {
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  const entry = { name, child, log: "", exited: null };
  child.stdout.on("data", (chunk) => (entry.log += chunk));
  child.stderr.on("data", (chunk) => (entry.log += chunk));
  child.on("exit", (code, signal) => (entry.exited = { code, signal }));
  processes.push(entry);
  return entry;
}

// Waits until the process logs a line matching `pattern`; resolves to the match.
async function waitForLog(entry, pattern) {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  for (;;) {
    const match = entry.log.match(pattern);
    if (match) return match;
    if (entry.exited)
      throw new Error(`${entry.name} exited (${JSON.stringify(entry.exited)}):\n${entry.log}`);
    if (Date.now() > deadline) throw new Error(`${entry.name} did not log ${pattern} in time:\n${entry.log}`);
    await sleep(50);
  }
}

async function run(name, command, args) {
  const entry = start(name, command, args);
  await new Promise((resolve) => entry.child.on("exit", resolve));
  assert.equal(entry.exited.code, 0, `${command} ${args.join(" ")} failed:\n${entry.log}`);
  return entry.log;
}

async function stop(entry) {
  if (entry.exited) return;
  const exited = new Promise((resolve) => entry.child.on("exit", resolve));
  entry.child.kill("SIGTERM");
  const timer = setTimeout(() => entry.child.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(timer);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Calls Tollgate from Node (not the browser): { status, headers, body }.
async function api(method, urlPath, { key = keys.keys.test.secret, body, headers = {} } = {}) {
  const response = await fetch(tollgateUrl + urlPath, {
    method,
    headers: {
      ...(key ? { Authorization: `Bearer ${key}` } : {}),
      ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON (an empty preflight answer)
  }
  return { status: response.status, headers: response.headers, body: json, text };
}

// Polls `read` until it gives `expected`, then fails with the last value it gave.
async function eventually(what, read, expected) {
  const deadline = Date.now() + SETTLE_TIMEOUT_MS;
  let actual;
  for (;;) {
    actual = await read();
    if (isDeepStrictEqual(actual, expected)) return;
    if (Date.now() > deadline) break;
    await sleep(100);
  }
  assert.deepEqual(
    actual,
    expected,
    `${what}: still ${JSON.stringify(actual)} after ${SETTLE_TIMEOUT_MS} ms`,
  );
}

function imagesBar(onPage = page) {
  return onPage.getByRole("progressbar", { name: "Images per day" });
}

// What a person (and a screen reader) gets from the images bar.
async function barShows(onPage = page) {
  const widget = onPage.locator("tollgate-usage");
  const state = await widget.getAttribute("data-state");
  if (state !== "ready") return { state };
  const bar = imagesBar(onPage);
  return {
    state,
    valuenow: await bar.getAttribute("aria-valuenow"),
    valuemin: await bar.getAttribute("aria-valuemin"),
    valuemax: await bar.getAttribute("aria-valuemax"),
    text: await bar.locator('[part="remaining"]').textContent(),
  };
}

async function serverUsage(limitId) {
  const usage = await api("GET", "/v1/users/demo_user/usage");
  assert.equal(usage.status, 200, usage.text);
  return usage.body.limits.find((limit) => limit.limitId === limitId);
}

// fetch() run inside a page, from its origin: { status, code } or { threw }.
function fetchFromPage(onPage, urlPath, { method = "GET", headers = {}, body } = {}) {
  return onPage.evaluate(
    async ({ url, method, headers, body }) => {
      try {
        const response = await fetch(url, { method, headers, body });
        const answer = await response.json().catch(() => null);
        return { status: response.status, code: answer?.error?.code ?? null, userId: answer?.userId ?? null };
      } catch (error) {
        return { threw: error.name };
      }
    },
    { url: tollgateUrl + urlPath, method, headers, body },
  );
}

// ------------------------------------------------------------------------------ setup

before(async () => {
  assert.ok(BIN, "set TOLLGATE_BIN to a built tollgate binary");
  await mkdir(ARTIFACTS, { recursive: true });
  dataDir = await mkdtemp(path.join(os.tmpdir(), "tollgate-browser-"));

  keys = JSON.parse(await run("tollgate-init", BIN, ["init", "--json", "--data-dir", dataDir]));
  const server = start("tollgate", BIN, ["serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir]);
  tollgateUrl = (await waitForLog(server, /listening on (http:\/\/[0-9.:]+)/))[1];

  const plans = await api("PUT", "/v1/plans", { body: PLAN_DOCUMENT });
  assert.equal(plans.status, 200, `PUT /v1/plans: ${plans.text}`);

  const app = start("example", process.execPath, [path.join(REPO, "examples/widget/server.mjs")], {
    TOLLGATE_URL: tollgateUrl,
    TOLLGATE_SECRET_KEY: keys.keys.test.secret,
    TOLLGATE_PUBLISHABLE_KEY: keys.keys.test.publishable,
    PORT: "0",
  });
  appUrl = (await waitForLog(app, /listening on (http:\/\/[0-9.:]+)/))[1];

  // The example's page, served as it is from a second origin that nobody listed.
  stranger = http.createServer(async (req, res) => {
    if (req.url !== "/") return res.writeHead(404).end();
    const html = await (await fetch(appUrl + "/")).text();
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" }).end(html);
  });
  await new Promise((resolve) => stranger.listen(0, "127.0.0.1", resolve));
  strangerUrl = `http://127.0.0.1:${stranger.address().port}`;

  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  // A fixed locale and time zone, so that numbers, prices and dates read the same everywhere.
  context = await browser.newContext({
    locale: "en-US",
    timezoneId: "UTC",
    viewport: { width: 900, height: 700 },
  });
  context.on("console", (message) => consoleLines.push(`[${message.type()}] ${message.text()}`));
  context.on("weberror", (error) => pageErrors.push(String(error.error())));
  page = await context.newPage();
});

after(async () => {
  await context?.close().catch(() => {});
  await browser?.close().catch(() => {});
  await new Promise((resolve) => (stranger ? stranger.close(resolve) : resolve()));
  for (const entry of processes) await stop(entry);
  // What each process and the browser console said, for a failure to be read afterwards.
  await mkdir(ARTIFACTS, { recursive: true });
  for (const entry of processes) await writeFile(path.join(ARTIFACTS, `${entry.name}.log`), entry.log);
  await writeFile(path.join(ARTIFACTS, "console.log"), consoleLines.join("\n") + "\n");
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

// Whatever else happens, no process of this test outlives it.
process.on("exit", () => {
  for (const entry of processes) if (!entry.exited) entry.child.kill("SIGKILL");
});

// ------------------------------------------------------------------------------ tests

test("the usage bar shows the whole daily quota before any use", async () => {
  await page.goto(appUrl + "/");
  await eventually("the images bar", () => barShows(), {
    state: "ready",
    valuenow: "0",
    valuemin: "0",
    valuemax: String(DAILY_QUOTA),
    text: `5 of ${DAILY_QUOTA} left`,
  });
  // Only the limit the element names, though the plan has two.
  assert.equal(await page.getByRole("progressbar").count(), 1);
  const limit = await serverUsage("images_daily");
  const time = imagesBar().locator("time");
  assert.equal(await time.getAttribute("datetime"), limit.resetsAt, "the reset time is the server's");
  assert.match(await imagesBar().locator('[part="resets"]').textContent(), /^Resets \S/);
  assert.match(await imagesBar().getAttribute("aria-valuetext"), /^5 of 5 left, Resets /);
  userToken = await page.locator("tollgate-usage").getAttribute("user-token");
  assert.match(userToken, /^tg_ut_/);
});

test("Generate twice: the bar follows to 3 of 5 left", async () => {
  const generate = page.getByRole("button", { name: "Generate" });
  await generate.click();
  await eventually("after one generation", () => barShows().then((b) => b.text), "4 of 5 left");
  await generate.click();
  await eventually("after two generations", () => barShows(), {
    state: "ready",
    valuenow: "2",
    valuemin: "0",
    valuemax: "5",
    text: "3 of 5 left",
  });
  assert.equal(await page.getByRole("status").textContent(), "Generated one image.");
  const limit = await serverUsage("images_daily");
  assert.deepEqual(
    { used: limit.used, reserved: limit.reserved, remaining: limit.remaining },
    { used: 2, reserved: 0, remaining: 3 },
  );

  await page.screenshot({ path: path.join(ARTIFACTS, "widget.png"), fullPage: true });
});

test("refresh() shows usage the page did not make", async () => {
  const track = await api("POST", "/v1/track", {
    body: { userId: "demo_user", event: "image.render", quantity: 1 },
  });
  assert.equal(track.status, 200, track.text);
  assert.equal(track.body.recorded, true);
  await page.locator("tollgate-usage").evaluate((element) => element.refresh());
  assert.deepEqual(await barShows(), {
    state: "ready",
    valuenow: "3",
    valuemin: "0",
    valuemax: "5",
    text: "2 of 5 left",
  });
});

test("attribute changes re-render: another limit, every limit, a refused token", async () => {
  const widget = page.locator("tollgate-usage");

  await widget.evaluate((element) => element.setAttribute("limit", "no_such_limit"));
  await eventually("an unknown limit", () => widget.getAttribute("data-error"), "unknown_limit");
  assert.equal(await widget.getAttribute("data-state"), "error");
  assert.equal(
    await widget.getByRole("alert").textContent(),
    'Your usage could not be loaded: your plan has no limit named "no_such_limit".',
  );

  await widget.evaluate((element) => element.removeAttribute("limit"));
  await eventually("every limit of the plan", () => widget.getByRole("progressbar").count(), 2);
  const parallel = page.getByRole("progressbar", { name: "Parallel renders" });
  assert.equal(await parallel.getAttribute("aria-valuemax"), "2");
  assert.equal(await parallel.locator('[part="remaining"]').textContent(), "2 of 2 left");

  // An altered signature: the server refuses it (401), and says so across origins.
  const altered = userToken.slice(0, -2) + (userToken.endsWith("AA") ? "BB" : "AA");
  await widget.evaluate((element, token) => element.setAttribute("user-token", token), altered);
  await eventually("an altered token", () => widget.getAttribute("data-error"), "invalid_key");
  assert.equal(await widget.getAttribute("data-state"), "error");
  assert.equal(await widget.getByRole("progressbar").count(), 0);
  assert.equal(
    await widget.getByRole("alert").textContent(),
    "Your usage could not be loaded: the sign-in has expired or is not valid. Reload the page.",
  );

  await widget.evaluate((element, token) => {
    element.setAttribute("user-token", token);
    element.setAttribute("limit", "images_daily");
  }, userToken);
  await eventually("back to the images bar", () => barShows().then((b) => b.text), "2 of 5 left");
});

test("fetch() from the listed origin: answers, and refusals it may read", async () => {
  const pk = keys.keys.test.publishable;
  const asUser = { Authorization: `Bearer ${pk}`, "X-Tollgate-User-Token": userToken };
  assert.deepEqual(await fetchFromPage(page, "/v1/me/usage", { headers: asUser }), {
    status: 200,
    code: null,
    userId: "demo_user",
  });
  assert.deepEqual(
    await fetchFromPage(page, "/v1/me/usage", { headers: { Authorization: `Bearer ${pk}` } }),
    {
      status: 401,
      code: "invalid_key",
      userId: null,
    },
  );
  const altered = {
    ...asUser,
    "X-Tollgate-User-Token": userToken.replace(/\.(.)/, (_, c) => "." + (c === "A" ? "B" : "A")),
  };
  assert.deepEqual(await fetchFromPage(page, "/v1/me/usage", { headers: altered }), {
    status: 401,
    code: "invalid_key",
    userId: null,
  });
  // A token of the live environment with the test publishable key.
  const live = await api("POST", "/v1/user-tokens", {
    key: keys.keys.live.secret,
    body: { userId: "demo_user" },
  });
  assert.equal(live.status, 200, live.text);
  assert.deepEqual(
    await fetchFromPage(page, "/v1/me/usage", {
      headers: { ...asUser, "X-Tollgate-User-Token": live.body.token },
    }),
    { status: 403, code: "forbidden", userId: null },
  );
  // A publishable key cannot meter: reserve is for the app's backend.
  assert.deepEqual(
    await fetchFromPage(page, "/v1/reserve", {
      method: "POST",
      headers: { Authorization: `Bearer ${pk}`, "Content-Type": "application/json" },
      body: JSON.stringify({ userId: "demo_user", event: "image.render" }),
    }),
    { status: 403, code: "requires_secret_key", userId: null },
  );
});

test("the pricing table renders the public plans", async () => {
  const pricing = page.locator("tollgate-pricing");
  await eventually("the pricing table", () => pricing.getAttribute("data-state"), "ready");
  const cards = pricing.locator('[part="card"]');
  const shown = await cards.evaluateAll((elements) =>
    elements.map((card) => ({
      id: card.dataset.planId,
      name: card.querySelector('[part="name"]').textContent,
      price: card.querySelector('[part="price"]')?.textContent ?? null,
      features: [...card.querySelectorAll('[part="features"] li')].map((li) => li.textContent),
      limits: [...card.querySelectorAll('[part="limits"] li')].map((li) => li.textContent),
      elementsInName: card.querySelector('[part="name"]').children.length,
    })),
  );
  assert.deepEqual(shown, [
    {
      id: "free",
      name: "Free",
      price: "$0 / month",
      features: ["5 images a day"],
      limits: ["Images per day: 5 per day", "Parallel renders: 2 at a time"],
      elementsInName: 0,
    },
    {
      id: "pro",
      name: "Pro <em>plus</em>",
      price: "$19 / month",
      features: ["500 images a day"],
      limits: ["Images per day: 500 per day"],
      elementsInName: 0,
    },
  ]);
  assert.equal(await pricing.getByRole("heading", { name: "Pro <em>plus</em>" }).count(), 1);
});

test("an origin not in corsOrigins is blocked: the widgets show an error", async () => {
  const strangerPage = await context.newPage();
  await strangerPage.goto(strangerUrl + "/");
  const widget = strangerPage.locator("tollgate-usage");
  await eventually(
    "the usage widget from an unlisted origin",
    () => widget.getAttribute("data-state"),
    "error",
  );
  assert.equal(await widget.getAttribute("data-error"), "network", "the browser hides the refusal itself");
  assert.equal(
    await widget.getByRole("alert").textContent(),
    "Your usage could not be loaded: the server could not be reached.",
  );
  assert.equal(await strangerPage.getByRole("progressbar").count(), 0);
  await eventually(
    "the pricing table from an unlisted origin",
    () => strangerPage.locator("tollgate-pricing").getAttribute("data-state"),
    "error",
  );

  const asUser = {
    Authorization: `Bearer ${keys.keys.test.publishable}`,
    "X-Tollgate-User-Token": userToken,
  };
  assert.deepEqual(await fetchFromPage(strangerPage, "/v1/me/usage", { headers: asUser }), {
    threw: "TypeError",
  });
  assert.deepEqual(
    await fetchFromPage(strangerPage, "/v1/plans", { headers: { Authorization: asUser.Authorization } }),
    {
      threw: "TypeError",
    },
  );
  await strangerPage.close();
});

test("CORS answers as the contract says (seen from Node, which can read every header)", async () => {
  const appOrigin = new URL(appUrl).origin;
  const strangerOrigin = new URL(strangerUrl).origin;
  const asUser = { "X-Tollgate-User-Token": userToken };
  const pk = keys.keys.test.publishable;

  const listed = await api("GET", "/v1/me/usage", { key: pk, headers: { ...asUser, Origin: appOrigin } });
  assert.equal(listed.status, 200, listed.text);
  assert.equal(listed.headers.get("access-control-allow-origin"), appOrigin);
  assert.match(listed.headers.get("vary") ?? "", /origin/i);

  const unlisted = await api("GET", "/v1/me/usage", {
    key: pk,
    headers: { ...asUser, Origin: strangerOrigin },
  });
  assert.equal(unlisted.status, 403, unlisted.text);
  assert.equal(unlisted.body?.error?.code, "forbidden");
  assert.equal(unlisted.headers.get("access-control-allow-origin"), null);

  const preflight = await api("OPTIONS", "/v1/me/usage", {
    key: null,
    headers: {
      Origin: appOrigin,
      "Access-Control-Request-Method": "GET",
      "Access-Control-Request-Headers": "authorization,x-tollgate-user-token",
    },
  });
  assert.equal(preflight.status, 204, preflight.text);
  assert.equal(preflight.headers.get("access-control-allow-origin"), appOrigin);
  assert.equal(preflight.headers.get("access-control-allow-methods"), "GET, POST, OPTIONS");
  // The headers the widget and a JSON POST need (the server may allow more).
  const allowedHeaders = (preflight.headers.get("access-control-allow-headers") ?? "").split(/,\s*/);
  for (const name of ["authorization", "content-type", "x-tollgate-user-token"]) {
    assert.ok(allowedHeaders.includes(name), `preflight allows ${name}: ${allowedHeaders}`);
  }
  assert.equal(preflight.headers.get("access-control-max-age"), "600");

  // The pricing data a browser gets holds public plans only and no biller ids.
  const plans = await api("GET", "/v1/plans", { key: pk, headers: { Origin: appOrigin } });
  assert.equal(plans.status, 200, plans.text);
  assert.deepEqual(
    plans.body.plans.map((plan) => plan.id),
    ["free", "pro"],
  );
  assert.ok(!plans.text.includes("price_pro_monthly"), "no biller ids for a publishable key");

  const script = await fetch(tollgateUrl + "/widget.js");
  assert.equal(script.status, 200);
  assert.equal(script.headers.get("content-type"), "application/javascript; charset=utf-8");
});

test("loading widget.js a second time is harmless", async () => {
  await page.evaluate(() => (window.firstUsageClass = customElements.get("tollgate-usage")));
  await page.addScriptTag({ url: tollgateUrl + "/widget.js" });
  assert.equal(
    await page.evaluate(() => customElements.get("tollgate-usage") === window.firstUsageClass),
    true,
  );
  // The element still refreshes on the window event.
  const track = await api("POST", "/v1/track", {
    body: { userId: "demo_user", event: "image.render", quantity: 1 },
  });
  assert.equal(track.status, 200, track.text);
  await page.evaluate(() => window.dispatchEvent(new Event("tollgate:refresh")));
  await eventually(
    "the images bar after tollgate:refresh",
    () => barShows().then((b) => b.text),
    "1 of 5 left",
  );
  assert.equal(await page.getByRole("progressbar").count(), 1);
});

test("the pages threw no script errors", () => {
  assert.deepEqual(pageErrors, []);
});
