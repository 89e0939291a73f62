// WebSocket blocked for real (a proxy resets every upgrade): the page updates over SSE; with SSE cut too, over long-polling.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import * as h from "./lib/harness.js";

const KPIS = ["fallback_a", "fallback_b"];
let stack, proxy, ctx, page, pub;

before(async () => {
  stack = await h.startStack({ demo: false });
  proxy = await h.startProxy(stack.base);
  ctx = await h.launchBrowser();
  page = await ctx.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  pub = h.publisher(stack.grpcAddr);
});

after(async () => {
  pub?.close();
  await ctx?.close();
  await proxy?.close();
  await h.stopAll();
});

async function shows(kpi, value, source) {
  await h.waitFor(`${kpi} = ${value} via ${source}`, async () => {
    const w = (await h.readWidgets(page)).find((x) => x.kpi === kpi);
    return w && w.value === value && w.source === source && !w.stale;
  });
}

test("with WebSocket blocked the page updates through SSE, and with SSE blocked too through polling", async () => {
  await page.goto(`${proxy.base}/?kpis=${KPIS.join(",")}`);
  await h.waitFor("the client to settle on SSE", async () => {
    const s = await h.clientStatus(page);
    return s.state === "live" && s.transport === "sse";
  }, 30000);
  assert.ok(proxy.state.counts.ws >= 2, `the page really tried WebSocket (${proxy.state.counts.ws} upgrades reset)`);
  assert.ok(await page.evaluate(() => typeof WebSocket === "function"), "WebSocket itself is not stubbed out");
  const log = await h.clientLog(page);
  assert.ok(log.some((e) => e.ev === "transport" && e.from === "ws" && e.to === "sse"), "moved from ws to sse");

  await pub.publish(KPIS[0], 11);
  await shows(KPIS[0], 11, "sse");
  await pub.publish(KPIS[1], 12);
  await shows(KPIS[1], 12, "sse");
  assert.match(await page.textContent("#status"), /SSE/);

  // Now SSE goes too: open streams are cut and new ones get 502.
  proxy.cutSse();
  await h.waitFor("the client to fall back to polling", async () => {
    const s = await h.clientStatus(page);
    return s.state === "live" && s.transport === "poll";
  }, 30000);
  await pub.publish(KPIS[0], 21);
  await shows(KPIS[0], 21, "poll");
  await pub.publish(KPIS[1], 22);
  await shows(KPIS[1], 22, "poll");
  assert.ok(proxy.state.counts.poll > 0, "updates came through /updates long polls");
  assert.match(await page.textContent("#status"), /polling/);
  h.assertSeqsIncrease(await h.clientLog(page));
});
