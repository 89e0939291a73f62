// A widget's refresh choice: at 5 s it updates no more often than every 5 s, shows the newest value, and the choice survives a reload.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import * as h from "./lib/harness.js";

const KPI = "cadence_e2e";
let stack, ctx, page, pub;

before(async () => {
  stack = await h.startStack({ demo: false });
  ctx = await h.launchBrowser();
  page = await ctx.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  pub = h.publisher(stack.grpcAddr);
});

after(async () => {
  pub?.close();
  await ctx?.close();
  await h.stopAll();
});

/** When each message of KPI was applied by the page's client (ms), with its seq. */
async function applied(page, since) {
  const log = await h.clientLog(page);
  return log.filter((e) => e.ev === "applied" && e.kpi === KPI && e.t >= since).map((e) => ({ t: e.t, seq: e.seq }));
}

test("a widget at 5 s updates at most every 5 s, ends on the newest value, and keeps its choice after a reload", async () => {
  await pub.publish(KPI, 1);
  await page.goto(`${stack.base}/?kpis=${KPI}`);
  await h.waitFor("the widget to show the first value", async () => {
    const w = (await h.readWidgets(page)).find((x) => x.kpi === KPI);
    return w && w.value === 1 && !w.stale;
  });
  await h.widget(page, KPI).locator(".w-cadence").selectOption("5s");
  // The resubscription's snapshot comes at once; let it land before counting.
  await h.sleep(1000);
  const from = Date.now();
  // 4 events a second for 12 s, values 2..49.
  let value = 1;
  while (Date.now() - from < 12000) {
    value += 1;
    await pub.publish(KPI, value);
    await h.sleep(250);
  }
  const lastPublished = Date.now();
  await h.waitFor(`the widget to show the newest value ${value}`, async () => {
    const w = (await h.readWidgets(page)).find((x) => x.kpi === KPI);
    return w && w.value === value;
  }, 15000);
  const shownAt = Date.now();
  // The gateway holds the newest at most 5 s; the rest is the test's polling and a loaded machine.
  assert.ok(shownAt - lastPublished < 9000, `newest shown ${shownAt - lastPublished} ms after the last publish`);
  const times = (await applied(page, from)).map((a) => a.t);
  assert.ok(times.length >= 2 && times.length <= 4, `12 s at 5 s gives 2 to 4 updates, got ${times.length}`);
  for (let i = 1; i < times.length; i++) {
    // 5 s apart when sent; arrival jitter on a loaded machine can take a little off.
    assert.ok(times[i] - times[i - 1] >= 4000, `updates ${times[i] - times[i - 1]} ms apart`);
  }
  assert.match(await h.widget(page, KPI).locator(".w-due").textContent(), /next/);

  await page.reload();
  await h.waitFor("the widget back after the reload", async () => {
    const w = (await h.readWidgets(page)).find((x) => x.kpi === KPI);
    return w && w.value === value && !w.stale;
  });
  assert.equal(await h.widget(page, KPI).locator(".w-cadence").inputValue(), "5s");
  const layout = await page.evaluate(() => JSON.parse(localStorage.getItem("kpistream.dashboard.v1")));
  assert.equal(layout.widgets.find((w) => w.kpi === KPI).cadence, "5s");
});
