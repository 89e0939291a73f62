// Patch application: RFC 7386 itself, and `patch` messages turned back into full messages (or a resubscription when the base is not the one held).
import { test } from "node:test";
import assert from "node:assert/strict";

import { KpiStream, applyMergePatch, type DataMessage } from "../src/index.js";
import { FakeWebSocket, data, testEnv } from "./fakes.js";

test("RFC 7386's examples (appendix A)", () => {
  const cases: [unknown, unknown, unknown][] = [
    [{ a: "b" }, { a: "c" }, { a: "c" }],
    [{ a: "b" }, { b: "c" }, { a: "b", b: "c" }],
    [{ a: "b" }, { a: null }, {}],
    [{ a: "b", b: "c" }, { a: null }, { b: "c" }],
    [{ a: ["b"] }, { a: "c" }, { a: "c" }],
    [{ a: "c" }, { a: ["b"] }, { a: ["b"] }],
    [{ a: { b: "c" } }, { a: { b: "d", c: null } }, { a: { b: "d" } }],
    [{ a: [{ b: "c" }] }, { a: [1] }, { a: [1] }],
    [["a", "b"], ["c", "d"], ["c", "d"]],
    [{ a: "b" }, ["c"], ["c"]],
    [{ a: "foo" }, null, null],
    [{ a: "foo" }, "bar", "bar"],
    [{ e: null }, { a: 1 }, { e: null, a: 1 }],
    [[1, 2], { a: "b", c: null }, { a: "b" }],
    [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
  ];
  for (const [target, patch, want] of cases) {
    assert.deepEqual(applyMergePatch(structuredClone(target), patch), want, JSON.stringify({ target, patch }));
  }
});

test("a patch on the held seq becomes the full update, with the nulls a patch cannot carry put back", () => {
  const t = testEnv();
  const c = new KpiStream({ env: t.env, cache: false, transports: ["ws"] });
  const got: DataMessage[] = [];
  c.subscribe("sales", "minute", (m) => got.push(m), { encoding: "delta" });
  const ws = FakeWebSocket.last();
  ws.open();
  assert.equal(ws.sentOf("subscribe")[0]?.encoding, "delta");
  const base = data(7, 3, { previous: { bucket_start: "2026-12-01T09:59:00Z", stats: { count: 1, sum: 2, avg: 2, min: 2, max: 2, last: 2 } } });
  ws.receive(base);
  // Seq 8: last 3 -> 4, and the previous bucket is gone (a null, so removed by the patch).
  ws.receive({ type: "patch", kpi: "sales", period: "minute", base_seq: 7, seq: 8, patch: { seq: 8, stats: { last: 4, count: 8 }, previous: null } });
  assert.equal(got.length, 2);
  const full = got[1];
  assert.ok(full);
  assert.equal(full.type, "update");
  assert.equal(full.seq, 8);
  assert.equal(full.stats.last, 4);
  assert.equal(full.stats.count, 8);
  assert.equal(full.stats.min, 3, "untouched fields are kept");
  assert.equal(full.previous, null, "a removed member reads as null, as in a full message");
  assert.equal(got[0]?.previous?.stats.last, 2, "the base message is not mutated");
  // A stat that became null (an emptied bucket) is removed by the patch and restored as null.
  ws.receive({ type: "patch", kpi: "sales", period: "minute", base_seq: 8, seq: 9, patch: { seq: 9, stats: { last: null, avg: null } } });
  assert.equal(got[2]?.stats.last, null);
  assert.equal(got[2]?.stats.avg, null);
  c.close();
});

test("a patch against another seq is not applied: the topic is subscribed again for a full message", () => {
  const t = testEnv();
  const c = new KpiStream({ env: t.env, cache: false, transports: ["ws"] });
  const got: number[] = [];
  c.subscribe("sales", "minute", (m) => got.push(m.seq), { encoding: "delta" });
  const ws = FakeWebSocket.last();
  ws.open();
  ws.receive(data(7, 3));
  ws.receive({ type: "patch", kpi: "sales", period: "minute", base_seq: 8, seq: 9, patch: { stats: { last: 9 } } });
  assert.deepEqual(got, [7]);
  assert.equal(ws.sentOf("unsubscribe").length, 1);
  assert.deepEqual(ws.sentOf("subscribe").at(-1), { type: "subscribe", kpi: "sales", period: "minute", encoding: "delta", since: 7 });
  assert.ok(c.log.some((e) => e.ev === "patch-miss" && e.base === 8));
  // An old patch (behind what is held) is simply dropped.
  ws.receive({ type: "patch", kpi: "sales", period: "minute", base_seq: 5, seq: 6, patch: {} });
  assert.equal(ws.sentOf("unsubscribe").length, 1);
  c.close();
});
