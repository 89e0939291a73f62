// The dashboard against a live `kpi-stack --demo`: demo KPIs, live values from gRPC publishes, period switch, thresholds, pause, layout, screenshot.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import * as h from "./lib/harness.js";

const E2E = "browser_e2e";
let stack, ctx, page, pub;

before(async () => {
  stack = await h.startStack({ demo: true });
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

test("the page loads, shows the demo KPIs, and values change as events are published over gRPC", async () => {
  await page.goto(`${stack.base}/`);
  // No saved layout and no ?kpis=: the page picks what the gateway knows, the demo's ten.
  const first = await h.waitFor("every demo KPI live on the page", async () => {
    const ws = await h.readWidgets(page);
    const ok = h.DEMO_CODES.every((c) => ws.some((w) => w.kpi === c && w.value !== null && !w.stale));
    return ok && ws;
  });
  assert.deepEqual(first.map((w) => w.kpi).sort(), [...h.DEMO_CODES].sort());
  const status = await h.clientStatus(page);
  assert.equal(status.state, "live");
  assert.equal(status.transport, "ws");
  assert.match(await page.textContent("#status"), /live · WebSocket/);

  // The demo feeder publishes over gRPC: the same widgets move on their own.
  await h.waitFor("demo values to change", async () => {
    const now = await h.readWidgets(page);
    return now.some((w) => {
      const was = first.find((f) => f.kpi === w.kpi);
      return w.seq > was.seq && w.value !== was.value;
    });
  });

  // Our own publisher: add a KPI through the picker, then publish to it.
  await page.fill("#pick-kpi", E2E);
  await page.click("#picker button[type=submit]");
  await h.waitFor("the new widget to be subscribed", async () => {
    const w = (await h.readWidgets(page)).find((x) => x.kpi === E2E);
    return w && !w.stale;
  });
  for (const value of [4242.5, 17.25, 980]) {
    const res = await pub.publish(E2E, value);
    assert.equal(res.results[0].status, "STORED", JSON.stringify(res));
    await h.waitFor(`${E2E} to show ${value}`, async () => {
      const w = (await h.readWidgets(page)).find((x) => x.kpi === E2E);
      return w && w.value === value && w.source === "ws";
    });
  }
  assert.equal((await h.widget(page, E2E).locator(".w-value").textContent()).replace(/[^\d.]/g, ""), "980");
});

test("switching a widget from minute to hour shows the hour bucket's value", async () => {
  const now = new Date();
  // An event 70 s ago lands in an earlier minute (still within lateness) but
  // in this hour: the hour bucket then differs visibly from the minute one.
  const early = new Date(now.getTime() - 70_000);
  const sameHour = early.getUTCHours() === now.getUTCHours();
  if (sameHour) await pub.publish(E2E, 5, early);
  await pub.publish(E2E, 123.5);
  await h.waitFor("minute widget to show 123.5", async () => {
    const w = (await h.readWidgets(page)).find((x) => x.kpi === E2E);
    return w && w.value === 123.5;
  });

  await h.widget(page, E2E).locator(".w-period").selectOption("hour");
  const api = await h.waitFor("the hour widget to match /api/kpi/<code>?period=hour", async () => {
    const snap = await h.getJson(`${stack.base}/api/kpi/${E2E}?period=hour`);
    const w = (await h.readWidgets(page)).find((x) => x.kpi === E2E);
    const same =
      w.period === "hour" &&
      w.seq === snap.seq &&
      w.bucketStart === snap.bucket_start &&
      w.value === snap.stats.last &&
      w.count === snap.stats.count &&
      !w.stale;
    return same && snap;
  });
  assert.equal(new Date(api.bucket_start).getUTCMinutes(), 0, "an hour bucket starts on the hour");
  const minute = await h.getJson(`${stack.base}/api/kpi/${E2E}?period=minute`);
  if (sameHour) {
    assert.ok(api.stats.count > minute.stats.count, `hour count ${api.stats.count} > minute count ${minute.stats.count}`);
  }
  const shown = await h.widget(page, E2E).locator(".w-count").textContent();
  assert.equal(shown.replace(/[^\d]/g, ""), String(api.stats.count));
});

test("a threshold crossing shows a notice; pause holds updates; the layout persists", async () => {
  const w = h.widget(page, E2E);
  await w.locator(".w-above").fill("500");
  await w.locator(".w-above").dispatchEvent("change");
  await pub.publish(E2E, 750);
  await page.waitForSelector(`.notice[data-kpi="${E2E}"][data-dir="above"]`, { timeout: 10000 });
  assert.match(await page.textContent(`.notice[data-kpi="${E2E}"]`), /rose above 500/);
  assert.ok(await w.evaluate((el) => el.classList.contains("alert-above")));

  // Pause: a published value does not reach the widget until resume.
  await page.click("#pause");
  await h.waitFor("paused status", async () => (await h.clientStatus(page)).paused);
  await pub.publish(E2E, 321);
  await h.waitFor("the gateway to have 321", async () => (await h.getJson(`${stack.base}/api/kpi/${E2E}?period=hour`)).stats.last === 321);
  await h.sleep(700);
  assert.equal((await h.readWidgets(page)).find((x) => x.kpi === E2E).value, 750, "paused widgets hold still");
  await page.click("#pause");
  await h.waitFor("the held value after resume", async () => (await h.readWidgets(page)).find((x) => x.kpi === E2E).value === 321);

  // Reload: the same widgets, period and threshold come back from localStorage.
  await page.reload();
  await h.waitFor("the saved layout after reload", async () => {
    const ws = await h.readWidgets(page);
    const e = ws.find((x) => x.kpi === E2E);
    return ws.length === h.DEMO_CODES.length + 1 && e && e.period === "hour" && e.value === 321;
  });
  assert.equal(await h.widget(page, E2E).locator(".w-above").inputValue(), "500");

  // ?kpis= preselects, in a fresh tab of the same profile.
  const p2 = await ctx.newPage();
  await p2.goto(`${stack.base}/?kpis=revenue_eur,${E2E}`);
  await h.waitFor("the preselected widgets", async () => {
    const ws = await h.readWidgets(p2);
    return ws.length === 2 && ws.every((x) => x.value !== null) && ws.map((x) => x.kpi).join() === `revenue_eur,${E2E}`;
  });
  await p2.close();
});

test("a screenshot of the live page is written under target/screenshots", async () => {
  await h.waitFor("all widgets live", async () => (await h.readWidgets(page)).every((w) => !w.stale && w.value !== null));
  await h.sleep(1200); // let the change highlight fade
  const file = h.screenshotPath("dashboard.png");
  await page.screenshot({ path: file, fullPage: true });
  const { statSync } = await import("node:fs");
  assert.ok(statSync(file).size > 10_000, `${file} looks empty`);
});
