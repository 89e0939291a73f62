// Restarting the gateway under an open page: it reconnects by itself, resumes with `since`, and never shows an older value after a newer one.
//
// The stack runs on a real `nats-server -js` (random port, own store), so
// the aggregator's state and every topic's seq survive the restart, as they
// do in production; the new process listens on the same ports.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import * as h from "./lib/harness.js";

const WATCHED = ["revenue_eur", "active_users", "orders_per_minute", "failed_payments"];
let nats, stack, ctx, page;

before(async () => {
  nats = await h.startNats();
  stack = await h.startStack({ demo: true, natsUrl: nats.url });
  ctx = await h.launchBrowser();
  page = await ctx.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
});

after(async () => {
  await ctx?.close();
  await h.stopAll();
});

async function allCurrent(base) {
  const ws = await h.readWidgets(page);
  for (const kpi of WATCHED) {
    const snap = await h.getJson(`${base}/api/kpi/${kpi}?period=minute`);
    const w = ws.find((x) => x.kpi === kpi);
    if (!w || w.stale || w.seq === null || w.seq < snap.seq) return false;
  }
  return ws;
}

test("after a gateway restart the page reconnects by itself to current values, never going back", async () => {
  await page.goto(`${stack.base}/?kpis=${WATCHED.join(",")}`);
  const before = await h.waitFor("live values before the restart", () => allCurrent(stack.base));
  await page.evaluate(() => (window.__sameDocument = true));

  // SIGTERM: the gateway drains, closing the WebSocket with 1012.
  await h.stop(stack.proc);
  await h.waitFor("the page to notice", async () => (await h.clientStatus(page)).state !== "live");
  // `seq`, not `value`: a minute that rolled over just before the stop
  // shows an empty bucket, which has no value but is still what was last seen.
  await h.waitFor("every widget marked stale", async () => (await h.readWidgets(page)).every((w) => w.stale && w.seq !== null));
  await h.sleep(1500); // a real outage: the client has to retry at least once

  stack = await h.startStack({ demo: true, natsUrl: nats.url, httpPort: stack.httpPort, grpcPort: stack.grpcPort });
  const after = await h.waitFor("current values after the restart", () => allCurrent(stack.base), 45000);

  assert.equal(await page.evaluate(() => window.__sameDocument), true, "no reload: the client reconnected in place");
  for (const w of after) {
    const was = before.find((b) => b.kpi === w.kpi);
    assert.ok(w.seq > was.seq, `${w.kpi}: seq ${w.seq} after the restart > ${was.seq} before`);
  }
  // A fast restart can satisfy the waits above with one snapshot per KPI on
  // each side; the order check below must also cover live updates.
  await h.waitFor("live updates after the restart", async () => h.assertSeqsIncrease(await h.clientLog(page)) > WATCHED.length * 2);
  const log = await h.clientLog(page);
  const closes = log.filter((e) => e.ev === "closed");
  assert.ok(closes.some((e) => e.code === 1012), `a drain close (1012) was seen: ${JSON.stringify(closes)}`);
  const states = log.filter((e) => e.ev === "status").map((e) => e.state);
  const drop = states.lastIndexOf("reconnecting");
  assert.ok(drop > 0 && states.indexOf("live") < drop && states.slice(drop).includes("live"), `live, then reconnecting, then live: ${states}`);
  // The whole session, across the restart: per kpi+period, every applied seq is newer than the last.
  const applied = h.assertSeqsIncrease(log);
  assert.ok(applied > WATCHED.length * 2, `applied ${applied} messages`);
  assert.equal((await h.clientStatus(page)).transport, "ws");
});
