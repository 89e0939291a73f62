// The offline cache: the last value of each topic survives a restart (shown stale, then confirmed), per identity, and goes when the gateway says forbidden.
import { test } from "node:test";
import assert from "node:assert/strict";

import { KpiStream, type MessageMeta } from "../src/index.js";
import { FakeWebSocket, MemoryStorage, data, testEnv } from "./fakes.js";

/** An unsigned JWT with these claims (the client reads, the gateway verifies). */
const jwt = (claims: object): string =>
  `e30.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.sig`;

test("the last value is written within a second, shown stale on the next start, and confirmed by the gateway", async () => {
  const t = testEnv();
  const c = new KpiStream({ env: t.env, transports: ["ws"] });
  c.subscribe("sales", "minute", () => {});
  FakeWebSocket.last().open();
  FakeWebSocket.last().receive(data(12, 5));
  assert.equal(t.storage.length, 0, "writes are batched");
  await t.clock.advance(1000);
  assert.deepEqual([...t.storage.map.keys()], ["kpistream:last:http://gateway.test|anonymous|sales:minute"]);
  c.close();

  // Next start, same storage: the cached value first, stale; no `since` (it must be vouched for by a snapshot).
  const t2 = testEnv({ storage: t.storage });
  const c2 = new KpiStream({ env: t2.env, transports: ["ws"] });
  const got: [number, MessageMeta][] = [];
  const sub = c2.subscribe("sales", "minute", (m, meta) => got.push([m.seq, meta]));
  assert.deepEqual(got, [[12, { source: "cache", stale: true }]]);
  assert.equal(c2.latest("sales", "minute")?.seq, 12);
  const ws = FakeWebSocket.last();
  ws.open();
  assert.equal(ws.sentOf("subscribe")[0]?.since, undefined);
  ws.receive({ type: "subscribed", kpi: "sales", period: "minute" });
  assert.equal(sub.fresh, false, "an acknowledgement does not vouch for a cached value");
  ws.receive({ ...data(12, 5), type: "snapshot" });
  assert.equal(sub.fresh, true, "the same seq again does");
  assert.equal(got.length, 1, "and is not delivered twice");
  c2.close();
});

test("another identity does not see the cache, and forbidden clears it", async () => {
  const t = testEnv();
  const alice = jwt({ sub: "alice" });
  const c = new KpiStream({ env: t.env, transports: ["ws"], token: alice });
  c.subscribe("sales", "minute", () => {});
  assert.deepEqual(FakeWebSocket.last().protocols, ["kpistream", `bearer.${alice}`]);
  assert.ok(!FakeWebSocket.last().url.includes("token"), "the token stays out of the URL");
  FakeWebSocket.last().open();
  FakeWebSocket.last().receive(data(3, 1));
  c.close(); // flushes
  assert.equal(t.storage.length, 1);

  const t2 = testEnv({ storage: t.storage });
  const bob = new KpiStream({ env: t2.env, transports: ["ws"], token: jwt({ sub: "bob" }) });
  assert.equal(bob.latest("sales", "minute"), null);
  bob.close();

  const t3 = testEnv({ storage: t.storage });
  const again = new KpiStream({ env: t3.env, transports: ["ws"], token: alice });
  const errors: string[] = [];
  again.on("error", (e) => errors.push(e.code));
  assert.equal(again.latest("sales", "minute")?.seq, 3);
  again.subscribe("sales", "minute", () => {});
  FakeWebSocket.last().open();
  FakeWebSocket.last().receive({ type: "error", code: "forbidden", message: "no", kpi: "sales", period: "minute" });
  assert.deepEqual(errors, ["forbidden"]);
  assert.equal(t.storage.length, 0);
  again.close();
});

test("a storage that refuses writes leaves the client working", async () => {
  const broken = new MemoryStorage();
  broken.setItem = () => {
    throw new Error("QuotaExceededError");
  };
  const t = testEnv({ storage: broken });
  const c = new KpiStream({ env: t.env, transports: ["ws"] });
  const got: number[] = [];
  c.subscribe("sales", "minute", (m) => got.push(m.seq));
  FakeWebSocket.last().open();
  FakeWebSocket.last().receive(data(1, 1));
  await t.clock.advance(1000);
  FakeWebSocket.last().receive(data(2, 1));
  assert.deepEqual(got, [1, 2]);
  c.close();
});
