// Test support: starts the real `tollgate` binary named by TOLLGATE_BIN on a fresh data dir
// and a free port, and a tiny HTTP proxy that can drop answers or play dead, so retries and
// the unreachable policy are tested against the real server, not a mock.
import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** How long the server may take to say `listening on`. */
const START_TIMEOUT_MS = 15_000;

function binary() {
  const bin = process.env.TOLLGATE_BIN;
  if (bin === undefined || bin === "") {
    throw new Error("TOLLGATE_BIN is not set: point it at the tollgate binary (e.g. target/debug/tollgate)");
  }
  if (!existsSync(bin)) throw new Error(`TOLLGATE_BIN=${bin} does not exist; build it with \`cargo build -p tollgate\``);
  return bin;
}

/** Starts a server; answers `{ url, key, keys, admin, stop(), setPlans(doc), call(method, path, body) }`. */
export async function startServer() {
  const bin = binary();
  const dataDir = mkdtempSync(join(tmpdir(), "tollgate-sdk-ts-"));
  const init = JSON.parse(execFileSync(bin, ["init", "--data-dir", dataDir, "--json"], { encoding: "utf8" }));
  const child = spawn(bin, ["serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  const url = await new Promise((resolve, reject) => {
    let log = "";
    const timer = setTimeout(() => reject(new Error(`tollgate did not start in time:\n${log}`)), START_TIMEOUT_MS);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const match = /listening on (http:\/\/[^\s]+)/.exec(log);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`tollgate exited with ${code} before listening:\n${log}`));
    });
  });
  child.stderr.resume();
  const key = init.keys.test.secret;
  const call = async (method, path, body) => {
    const response = await fetch(`${url}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await response.json();
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(json)}`);
    return json;
  };
  return {
    url,
    key,
    keys: init.keys,
    call,
    setPlans: (doc) => call("PUT", "/v1/plans", doc),
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.on("exit", resolve));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** The plan of sdk-common.md: 5 images for life. */
export const FIVE_IMAGES = {
  defaultPlan: "free",
  plans: [{ id: "free", limits: [{ id: "images", quota: 5, window: { type: "lifetime" }, match: [{ event: "image.*" }] }] }],
};

/**
 * A proxy in front of `upstream`. `decide({ method, path, headers, count })` answers
 * `"forward"`, `"drop"` (close the connection without forwarding: the server is unreachable)
 * `"forward-then-drop"` (the server applies the request, its answer is lost) or `"unavailable"`
 * (answer `503 unavailable` with `Retry-After: 1` without forwarding, as an overloaded server does).
 * `requests` records every request seen.
 */
export async function startProxy(upstream, decide = () => "forward") {
  const target = new URL(upstream);
  const requests = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      const seen = { method: req.method, path: req.url, headers: req.headers, body: Buffer.concat(chunks).toString("utf8") };
      requests.push(seen);
      const action = decide({ ...seen, count: requests.length });
      if (action === "drop") {
        req.socket.destroy();
        return;
      }
      if (action === "unavailable") {
        res.writeHead(503, { "content-type": "application/json", "retry-after": "1" });
        res.end(JSON.stringify({ error: { code: "unavailable", message: "overloaded; nothing was applied" } }));
        return;
      }
      const upstreamRequest = httpRequest(
        { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
        (upstreamResponse) => {
          const body = [];
          upstreamResponse.on("data", (chunk) => body.push(chunk));
          upstreamResponse.on("end", () => {
            if (action === "forward-then-drop") {
              req.socket.destroy();
              return;
            }
            res.writeHead(upstreamResponse.statusCode ?? 502, upstreamResponse.headers);
            res.end(Buffer.concat(body));
          });
        },
      );
      upstreamRequest.on("error", () => req.socket.destroy());
      upstreamRequest.end(Buffer.concat(chunks));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    stop: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

/** A URL where nothing listens: a port bound and released. */
export async function deadUrl() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return `http://127.0.0.1:${port}`;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
