// Test harness: free ports, the built binaries (target/debug), nats-server, a gRPC publisher, headless Chromium, and a blocking proxy.
//
// Every process a test starts is tracked and stopped by `stopAll()` (call it
// in `after`), so a failing test leaves nothing running.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync, existsSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, "../../..");
export const BIN_DIR = process.env.KPI_BIN_DIR || path.join(ROOT, "target/debug");
export const SCREENSHOT_DIR = path.join(ROOT, "target/screenshots");
export const DEMO_CODES = [
  "perfect_order_fulfillment",
  "pending_approvals",
  "orders_per_minute",
  "revenue_eur",
  "cart_abandonment_rate",
  "avg_ticket_resolution_min",
  "active_users",
  "failed_payments",
  "inventory_turnover",
  "on_time_delivery_rate",
];

const children = new Set();
const tempDirs = new Set();

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export function tempDir(prefix) {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.add(d);
  return d;
}

/** Polls `fn` until it returns a truthy value, or throws after `timeoutMs` with `what`. */
export async function waitFor(what, fn, timeoutMs = 20000, everyMs = 200) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

function track(name, args, opts = {}) {
  const child = spawn(name, args, { stdio: ["ignore", "pipe", "pipe"], ...opts });
  const proc = { child, name: path.basename(name), log: "", exited: null };
  const keep = (d) => {
    proc.log += d.toString();
    if (proc.log.length > 200_000) proc.log = proc.log.slice(-100_000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  proc.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  children.add(proc);
  proc.exited.then(() => children.delete(proc));
  return proc;
}

/** Stops one process: SIGTERM, then SIGKILL after `graceMs`. */
export async function stop(proc, graceMs = 8000) {
  if (!proc || proc.child.exitCode !== null || proc.child.signalCode !== null) return;
  proc.child.kill("SIGTERM");
  const t = setTimeout(() => proc.child.kill("SIGKILL"), graceMs);
  await proc.exited;
  clearTimeout(t);
}

export async function stopAll() {
  await Promise.all([...children].map((p) => stop(p, 3000)));
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  tempDirs.clear();
}

async function httpOk(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return res.ok;
  } catch {
    return false;
  }
}

/** `nats-server -js` on a free port with its own store. */
export async function startNats() {
  const port = await freePort();
  const dir = tempDir("kpi-nats-");
  const bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"].find(existsSync) || "nats-server";
  const proc = track(bin, ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", dir]);
  await waitFor("nats-server to listen", () => new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1", () => (s.end(), resolve(true)));
    s.on("error", () => resolve(false));
  }), 10000);
  return { proc, port, url: `nats://127.0.0.1:${port}` };
}

/**
 * `kpi-stack` (ingest + aggregator + gateway) from target/debug. Pass the
 * ports of a previous stack to restart it in place.
 */
export async function startStack({ demo = true, natsUrl, httpPort, grpcPort, extraArgs = [] } = {}) {
  httpPort ??= await freePort();
  grpcPort ??= await freePort();
  const args = ["--listen", `127.0.0.1:${httpPort}`, "--grpc-listen", `127.0.0.1:${grpcPort}`, "--drain-secs", "3", "--coalesce-ms", "50"];
  if (demo) args.push("--demo", "--demo-rate", "4");
  if (natsUrl) args.push("--nats-url", natsUrl);
  args.push(...extraArgs);
  const env = { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" };
  const proc = track(path.join(BIN_DIR, "kpi-stack"), args, { env });
  const base = `http://127.0.0.1:${httpPort}`;
  await waitFor(`kpi-stack at ${base} to be ready`, async () => {
    if (proc.child.exitCode !== null) throw new Error(`kpi-stack exited: ${proc.log.slice(-2000)}`);
    return httpOk(`${base}/readyz`);
  }, 30000);
  return { proc, base, httpPort, grpcPort, grpcAddr: `127.0.0.1:${grpcPort}` };
}

/** `kpi-gateway` alone from target/debug, on `natsUrl`, with `extraArgs`. */
export async function startGateway({ natsUrl, extraArgs = [] }) {
  const httpPort = await freePort();
  const args = ["--listen", `127.0.0.1:${httpPort}`, "--drain-secs", "3", ...extraArgs];
  const env = { ...process.env, NATS_URL: natsUrl, RUST_LOG: process.env.RUST_LOG || "warn" };
  const proc = track(path.join(BIN_DIR, "kpi-gateway"), args, { env });
  const base = `http://127.0.0.1:${httpPort}`;
  await waitFor(`kpi-gateway at ${base} to be ready`, async () => {
    if (proc.child.exitCode !== null) throw new Error(`kpi-gateway exited: ${proc.log.slice(-2000)}`);
    return httpOk(`${base}/readyz`);
  }, 30000);
  return { proc, base, httpPort };
}

export async function getJson(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(10000) });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return res.json();
}

// ---- gRPC publisher (proto/kpi/v1/ingest.proto) ----

let ingestProto;
function ingestService() {
  if (!ingestProto) {
    const def = protoLoader.loadSync("kpi/v1/ingest.proto", {
      includeDirs: [path.join(ROOT, "proto")],
      keepCase: true,
      longs: String,
      enums: String,
      defaults: true,
    });
    ingestProto = grpc.loadPackageDefinition(def).kpi.v1;
  }
  return ingestProto.Ingest;
}

let eventCounter = 0;

/** A tiny gRPC publisher: `publish(kpi, value, time?)` resolves with the per-event results. */
export function publisher(grpcAddr) {
  const Ingest = ingestService();
  const client = new Ingest(grpcAddr, grpc.credentials.createInsecure());
  const publish = (kpi, value, time = new Date()) =>
    new Promise((resolve, reject) => {
      const ms = time.getTime();
      const event = {
        event_id: `browser-test-${process.pid}-${Date.now()}-${++eventCounter}`,
        kpi,
        value,
        time: { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 },
        labels: { source: "browser-test" },
      };
      client.Publish({ events: [event] }, { deadline: Date.now() + 10000 }, (err, res) => (err ? reject(err) : resolve(res)));
    });
  return { publish, close: () => client.close() };
}

// ---- Chromium ----

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

/**
 * Debian's Chromium, headless, with a fresh profile. Without the
 * background-networking flags Chromium keeps calling home, which on a closed
 * network only produces noise and delays.
 */
export async function launchBrowser() {
  const profile = tempDir("kpi-chromium-");
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return context;
}

export function screenshotPath(name) {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  return path.join(SCREENSHOT_DIR, name);
}

// ---- a proxy that blocks transports for real ----

/**
 * An HTTP reverse proxy in front of a gateway that behaves like a hostile
 * middlebox: it resets every WebSocket upgrade when `blockWs`, and answers
 * `/sse/` with 502 when `blockSse` (`cutSse()` also kills the open streams).
 * The browser really cannot open those transports; nothing is faked in the page.
 */
export async function startProxy(target) {
  const upstream = new URL(target);
  const state = { blockWs: true, blockSse: false, counts: { ws: 0, sse: 0, poll: 0, other: 0 } };
  const sseSockets = new Set();
  const server = http.createServer((req, res) => {
    const isSse = req.url.startsWith("/sse/");
    const kind = isSse ? "sse" : req.url.includes("/updates?") ? "poll" : "other";
    state.counts[kind] += 1;
    if (isSse && state.blockSse) {
      res.writeHead(502, { "content-type": "text/plain" });
      res.end("blocked by test proxy");
      return;
    }
    const up = http.request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
      (upRes) => {
        res.writeHead(upRes.statusCode, upRes.headers);
        upRes.pipe(res);
      },
    );
    up.on("error", () => res.destroy());
    req.pipe(up);
    if (isSse) {
      sseSockets.add(res.socket);
      res.on("close", () => {
        sseSockets.delete(res.socket);
        up.destroy();
      });
    }
  });
  server.on("upgrade", (req, socket) => {
    state.counts.ws += 1;
    // Reset, as a proxy that does not speak WebSocket would.
    socket.destroy();
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  return {
    base: `http://127.0.0.1:${port}`,
    state,
    cutSse() {
      state.blockSse = true;
      for (const s of sseSockets) s.destroy();
    },
    close: () => new Promise((r) => (server.closeAllConnections?.(), server.close(() => r()))),
  };
}

// ---- reading the page ----

/** Every widget's state as the page shows it. */
export function readWidgets(page) {
  return page.$$eval(".widget", (els) =>
    els.map((el) => ({
      kpi: el.dataset.kpi,
      period: el.dataset.period,
      seq: el.dataset.seq === "" || el.dataset.seq === undefined ? null : Number(el.dataset.seq),
      value: el.dataset.value === "" || el.dataset.value === undefined ? null : Number(el.dataset.value),
      count: el.dataset.count === "" || el.dataset.count === undefined ? null : Number(el.dataset.count),
      bucketStart: el.dataset.bucketStart || null,
      source: el.dataset.source || null,
      stale: el.classList.contains("stale"),
      text: el.querySelector(".w-value").textContent,
      age: el.querySelector(".w-age").textContent,
    })),
  );
}

export function widget(page, kpi) {
  return page.locator(`.widget[data-kpi="${kpi}"]`);
}

/** The client's debug log: applied and skipped seqs, transport changes, statuses. */
export function clientLog(page) {
  return page.evaluate(() => (window.__kpistream ? window.__kpistream.log.slice() : []));
}

export function clientStatus(page) {
  return page.evaluate(() => window.__kpistream && window.__kpistream.status);
}

/** Fails when any kpi+period was handed an older (or equal) seq after a newer one. */
export function assertSeqsIncrease(log) {
  const last = new Map();
  let applied = 0;
  for (const e of log) {
    if (e.ev !== "applied") continue;
    applied += 1;
    const key = `${e.kpi}/${e.period}`;
    const prev = last.get(key);
    if (prev !== undefined && e.seq <= prev) {
      throw new Error(`${key}: seq ${e.seq} applied after ${prev}`);
    }
    last.set(key, e.seq);
  }
  return applied;
}
