// Reconnect and backoff: full-jitter delays that grow and cap, a reset once connected, a quick return from a draining gateway, and falling back only while HTTP works.
import { test } from "node:test";
import assert from "node:assert/strict";

import { KpiStream } from "../src/index.js";
import { backoffCeiling, backoffDelay } from "../src/backoff.js";
import { FakeEventSource, FakeWebSocket, fakeFetch, testEnv } from "./fakes.js";

const O = { baseBackoffMs: 500, maxBackoffMs: 30000 };

test("the backoff ceiling doubles per failure up to the maximum, and the delay is a random share of it", () => {
  assert.deepEqual([0, 1, 2, 3, 6, 7, 50].map((n) => backoffCeiling(n, O)), [500, 1000, 2000, 4000, 30000, 30000, 30000]);
  assert.equal(backoffDelay(3, O, () => 0.25), 1000);
  assert.equal(backoffDelay(3, O, () => 0), 0);
});

test("a dropped connection is retried after growing delays, and a successful open starts over", async () => {
  const t = testEnv();
  const c = new KpiStream({ env: t.env, cache: false, transports: ["ws"] });
  c.subscribe("sales", "minute", () => {});
  FakeWebSocket.last().open();
  assert.equal(c.status.state, "live");

  // Dropped after it was open: retry after random(0.5) * 500 ms.
  FakeWebSocket.last().drop(1006);
  assert.equal(c.status.state, "reconnecting");
  assert.equal(c.status.retryInMs, 250);
  await t.clock.advance(249);
  assert.equal(FakeWebSocket.instances.length, 1, "not before the delay");
  await t.clock.advance(1);
  assert.equal(FakeWebSocket.instances.length, 2);

  // That one never opens (a dead gateway: /healthz fails too): the delay grows, and no fallback.
  t.env.fetch = fakeFetch(() => "down");
  const c2 = new KpiStream({ env: t.env, cache: false, transports: ["ws", "sse"], openTimeoutMs: 1000 });
  const before = FakeWebSocket.instances.length;
  const delays: number[] = [];
  for (let i = 0; i < 4; i++) {
    await t.clock.advance(1000); // the open timeout
    delays.push(c2.status.retryInMs);
    await t.clock.advance(c2.status.retryInMs);
  }
  assert.deepEqual(delays, [250, 500, 1000, 2000]);
  assert.equal(c2.status.transport, "ws", "a gateway that is down is waited for, not routed around");
  assert.equal(FakeEventSource.instances.length, 0);
  assert.ok(FakeWebSocket.instances.length >= before + 4);

  // It comes back: the next drop starts from the smallest delay again.
  FakeWebSocket.last().open();
  assert.equal(c2.status.state, "live");
  assert.equal(c2.status.attempt, 0);
  FakeWebSocket.last().drop(1006);
  assert.equal(c2.status.retryInMs, 250);
  c.close();
  c2.close();
});

test("a draining gateway (1012) is left within a second, without counting as a failure", async () => {
  const t = testEnv({ random: () => 0.9 });
  const c = new KpiStream({ env: t.env, cache: false, transports: ["ws"] });
  FakeWebSocket.last().open();
  FakeWebSocket.last().drop(1006);
  assert.equal(c.status.retryInMs, 450, "an ordinary drop: random * 500");
  assert.equal(c.status.attempt, 1);
  await t.clock.advance(450);
  FakeWebSocket.last().open();
  FakeWebSocket.last().drop(1012);
  assert.equal(c.status.retryInMs, 900, "a drain: random * 1000, spread over a second");
  assert.equal(c.status.attempt, 0);
  await t.clock.advance(900);
  assert.equal(FakeWebSocket.instances.length, 3);
  c.close();
});

test("WebSocket that keeps failing to open while HTTP works falls back to SSE, and moves back when it works again", async () => {
  const t = testEnv();
  const c = new KpiStream({ env: t.env, cache: false, openTimeoutMs: 1000, upgradeEveryMs: 60000 });
  c.subscribe("sales", "minute", () => {});
  await t.clock.advance(1000); // first open times out
  assert.equal(c.status.transport, "ws");
  await t.clock.advance(c.status.retryInMs);
  await t.clock.advance(1000); // second
  assert.equal(c.status.transport, "sse");
  assert.ok(c.log.some((e) => e.ev === "transport" && e.from === "ws" && e.to === "sse"));
  const es = FakeEventSource.instances.at(-1);
  assert.ok(es && es.url.startsWith("http://gateway.test/sse/kpi/sales?period=minute"), es?.url);
  es.open();
  assert.equal(c.status.state, "live");

  // A minute later the upgrade probe's WebSocket opens: back to ws.
  const probes = FakeWebSocket.instances.length;
  await t.clock.advance(60000);
  assert.equal(FakeWebSocket.instances.length, probes + 1);
  FakeWebSocket.last().open();
  await t.clock.advance(0);
  assert.equal(c.status.transport, "ws");
  assert.ok(es.closed, "the SSE stream was closed");
  c.close();
});

test("a connection that answers no ping is dropped and retried", async () => {
  const t = testEnv();
  const c = new KpiStream({ env: t.env, cache: false, transports: ["ws"], pingEveryMs: 25000, pongTimeoutMs: 10000 });
  const ws = FakeWebSocket.last();
  ws.open();
  await t.clock.advance(25000);
  assert.equal(ws.sentOf("ping").length, 1);
  await t.clock.advance(25000); // silent for 25 s > 10 s
  assert.equal(c.status.state, "reconnecting");
  assert.ok(c.log.some((e) => e.ev === "closed" && e.code === 4000));
  c.close();
});
