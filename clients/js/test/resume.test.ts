// Resume with `since`: after a reconnect every subscription asks for what it missed after the last seq it saw, on every transport, and never delivers an older value after a newer one.
import { test } from "node:test";
import assert from "node:assert/strict";

import { KpiStream, type DataMessage, type MessageMeta } from "../src/index.js";
import { FakeEventSource, FakeWebSocket, data, fakeFetch, testEnv } from "./fakes.js";

test("a reconnected WebSocket resubscribes with since = the last seq seen, and skips what it already has", async () => {
  const t = testEnv();
  const c = new KpiStream({ env: t.env, cache: false, transports: ["ws"] });
  const got: number[] = [];
  c.subscribe("sales", "minute", (m) => got.push(m.seq), { cadence: "5s" });
  const ws1 = FakeWebSocket.last();
  ws1.open();
  assert.deepEqual(ws1.sentOf("subscribe"), [{ type: "subscribe", kpi: "sales", period: "minute", cadence: "5s" }]);
  ws1.receive({ ...data(4, 1), type: "snapshot" });
  ws1.receive(data(5, 2));
  ws1.drop();
  await t.clock.advance(c.status.retryInMs);
  const ws2 = FakeWebSocket.last();
  assert.notEqual(ws2, ws1);
  ws2.open();
  assert.deepEqual(ws2.sentOf("subscribe"), [{ type: "subscribe", kpi: "sales", period: "minute", cadence: "5s", since: 5 }]);
  // A gateway may answer with a snapshot of what the client has, then newer updates; a late older one is dropped.
  ws2.receive({ ...data(5, 2), type: "snapshot" });
  ws2.receive(data(6, 3));
  ws2.receive(data(4, 1));
  assert.deepEqual(got, [4, 5, 6]);
  c.close();
});

test("a snapshot with a lower seq but a later updated_at (the gateway's history was wiped) is the new truth", () => {
  const t = testEnv();
  const c = new KpiStream({ env: t.env, cache: false, transports: ["ws"] });
  const got: number[] = [];
  c.subscribe("sales", "minute", (m) => got.push(m.seq));
  const ws = FakeWebSocket.last();
  ws.open();
  ws.receive(data(40, 1, { updated_at: "2026-12-01T10:00:00Z" }));
  ws.receive(data(3, 2, { type: "update", updated_at: "2026-12-01T11:00:00Z" }));
  ws.receive(data(3, 2, { type: "snapshot", updated_at: "2026-12-01T09:00:00Z" }));
  assert.deepEqual(got, [40], "older updates and older snapshots are skipped");
  ws.receive(data(3, 2, { type: "snapshot", updated_at: "2026-12-01T11:00:00Z" }));
  assert.deepEqual(got, [40, 3]);
  assert.ok(c.log.some((e) => e.ev === "reset" && e.seq === 3 && e.last === 40));
  c.close();
});

test("SSE streams and polls carry since, and the poller resumes after the last message it got", async () => {
  const t = testEnv();
  const polls: URL[] = [];
  let answer: DataMessage[] = [data(8, 1) as unknown as DataMessage];
  t.env.fetch = fakeFetch((u) => {
    if (u.pathname !== "/api/kpi/sales/updates") return { status: 200 };
    polls.push(u);
    const messages = answer;
    answer = [];
    return messages.length ? { status: 200, body: { kpi: "sales", period: "minute", messages } } : { status: 0 };
  });
  const c = new KpiStream({ env: t.env, cache: false, transports: ["poll"] });
  const got: [number, MessageMeta][] = [];
  c.subscribe("sales", "minute", (m, meta) => got.push([m.seq, meta]));
  await t.clock.advance(0);
  assert.equal(polls.length, 2, "the first poll answered, the second waits");
  assert.equal(polls[0]?.searchParams.get("since"), null);
  assert.equal(polls[0]?.searchParams.get("wait"), "25");
  assert.equal(polls[1]?.searchParams.get("since"), "8");
  assert.deepEqual(got, [[8, { source: "poll", stale: false }]]);
  c.close();

  const t2 = testEnv();
  const c2 = new KpiStream({ env: t2.env, cache: false, transports: ["sse"] });
  c2.subscribe("sales", "hour", () => {}, { cadence: "close", encoding: "delta" });
  const es = FakeEventSource.instances[0];
  assert.ok(es);
  es.open();
  es.receive(data(9, 1, { period: "hour" }));
  es.onerror?.({});
  await t2.clock.advance(c2.status.retryInMs);
  const again = new URL(FakeEventSource.instances.at(-1)?.url ?? "");
  assert.equal(again.searchParams.get("since"), "9");
  assert.equal(again.searchParams.get("cadence"), "close");
  assert.equal(again.searchParams.get("encoding"), "delta");
  c2.close();
});

test("a seq jump (an aggregator restart continues above what it may have sent) is a newer message: applied, no resubscribe, patches follow it", () => {
  const t = testEnv();
  const c = new KpiStream({ env: t.env, cache: false, transports: ["ws"] });
  const got: number[] = [];
  c.subscribe("sales", "minute", (m) => got.push(m.seq), { encoding: "delta" });
  const ws = FakeWebSocket.last();
  ws.open();
  ws.receive({ ...data(4, 1), type: "snapshot" });
  ws.receive(data(5, 2));
  // A trailing store repeats what the client holds: skipped.
  ws.receive(data(5, 2));
  ws.receive(data(38, 3));
  ws.receive({ type: "patch", kpi: "sales", period: "minute", base_seq: 38, seq: 39, patch: { seq: 39, stats: { last: 4 } } });
  assert.deepEqual(got, [4, 5, 38, 39]);
  assert.equal(ws.sentOf("subscribe").length, 1, "the jump made the client subscribe again");
  assert.ok(!c.log.some((e) => e.ev === "patch-miss" || e.ev === "reset"));
  c.close();
});
