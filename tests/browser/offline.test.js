// Offline: the network goes (and then the server): the last values stay on screen, marked stale, and come back from localStorage on the next load.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import * as h from "./lib/harness.js";

const KPIS = ["revenue_eur", "active_users", "pending_approvals"];
let stack, ctx, page;

before(async () => {
  stack = await h.startStack({ demo: true });
  ctx = await h.launchBrowser();
  page = await ctx.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
});

after(async () => {
  await ctx?.close();
  await h.stopAll();
});

const values = (ws) => Object.fromEntries(ws.map((w) => [w.kpi, w.value]));

test("offline, the last values stay on screen marked stale", async () => {
  const url = `${stack.base}/?kpis=${KPIS.join(",")}`;
  await page.goto(url);
  await h.waitFor("live values", async () => {
    const ws = await h.readWidgets(page);
    return ws.length === KPIS.length && ws.every((w) => w.value !== null && !w.stale);
  });

  await ctx.setOffline(true);
  await h.waitFor("the offline status", async () => (await h.clientStatus(page)).state === "offline");
  const atOffline = await h.readWidgets(page);
  assert.ok(atOffline.every((w) => w.stale && w.value !== null), JSON.stringify(atOffline));
  assert.match(await page.textContent("#status"), /offline/);

  // And the server goes away as well.
  await h.stop(stack.proc);
  await ctx.setOffline(false);
  await h.sleep(3000);
  const later = await h.readWidgets(page);
  assert.deepEqual(values(later), values(atOffline), "the values on screen are kept");
  assert.ok(later.every((w) => w.stale), "and marked stale");
  assert.notEqual((await h.clientStatus(page)).state, "live");

  // A gateway that knows nothing (fresh in-process bus, no demo): a new tab
  // shows the cached values, still stale, since nobody vouches for them.
  const fresh = await h.startStack({ demo: false, httpPort: stack.httpPort, grpcPort: stack.grpcPort });
  const p2 = await ctx.newPage();
  await p2.goto(url);
  await h.waitFor("the new tab to connect", async () => (await h.clientStatus(p2)).state === "live");
  const cached = await h.waitFor("cached values", async () => {
    const ws = await h.readWidgets(p2);
    return ws.length === KPIS.length && ws.every((w) => w.value !== null) && ws;
  });
  assert.deepEqual(values(cached), values(atOffline), "the cached values are the last ones shown");
  assert.ok(cached.every((w) => w.stale && w.source === "cache"), JSON.stringify(cached));
  await h.sleep(1500);
  assert.ok((await h.readWidgets(p2)).every((w) => w.stale), "an empty gateway does not make them fresh");
  await h.stop(fresh.proc);
});
