// Tokens in the browser client: the JWT goes as a WebSocket subprotocol (never in a URL), the cache is kept per identity and cleared on `forbidden`, and `getToken` refreshes a token before it expires.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { writeFileSync } from "node:fs";
import path from "node:path";

import * as h from "./lib/harness.js";

const SECRET = "browser-test-secret-0123456789abcdef0123";
const now = () => Math.floor(Date.now() / 1000);

/** An HS256 JWT with `claims`, signed with the gateway's secret. */
function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const signed = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${signed}.${crypto.createHmac("sha256", SECRET).update(signed).digest("base64url")}`;
}

let gw, ctx, page;
const wsUrls = [];

before(async () => {
  const nats = await h.startNats();
  const secret = path.join(h.tempDir("kpi-jwt-"), "secret");
  writeFileSync(secret, SECRET);
  gw = await h.startGateway({
    natsUrl: nats.url,
    extraArgs: ["--jwt-hs256-secret-file", secret, "--jwt-leeway-secs", "0"],
  });
  ctx = await h.launchBrowser();
  page = await ctx.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  page.on("websocket", (ws) => wsUrls.push(ws.url()));
  // Any page of the gateway's origin; the client is imported from /kpistream.js.
  await page.goto(`${gw.base}/healthz`);
});

after(async () => {
  await ctx?.close();
  await h.stopAll();
});

/** Opens a client with `token` in the page and waits for the first message of sales_eu. */
const firstMessage = (token) =>
  page.evaluate(async (token) => {
    const { KpiStream } = await import("/kpistream.js");
    const c = new KpiStream({ token, transports: ["ws"] });
    const got = await new Promise((resolve) => c.subscribe("sales_eu", "minute", (m, meta) => resolve(meta.source)));
    c.close();
    return got;
  }, token);

test("the token travels as a WebSocket subprotocol, never in a URL", async () => {
  const source = await firstMessage(jwt({ sub: "alice", exp: now() + 600, kpis: ["sales_*"] }));
  assert.equal(source, "ws");
  assert.ok(wsUrls.length > 0, "a WebSocket was opened");
  assert.ok(wsUrls.every((u) => !u.includes("token=")), wsUrls.join(" "));
});

test("the cache is kept per identity and cleared on forbidden", async () => {
  const keys = await page.evaluate(() => Object.keys(localStorage));
  assert.ok(keys.some((k) => k.includes("alice") && k.includes("sales_eu")), JSON.stringify(keys));
  // Another user in the same browser does not see alice's cached value.
  const bob = await firstMessage(jwt({ sub: "bob", exp: now() + 600, kpis: ["sales_*"] }));
  assert.equal(bob, "ws", "bob's first value is the gateway's, not alice's cache");
  // Alice lost access to sales: her cached values go.
  const left = await page.evaluate(async (token) => {
    const { KpiStream } = await import("/kpistream.js");
    const c = new KpiStream({ token, transports: ["ws"] });
    await new Promise((resolve) => {
      c.on("error", (e) => e.code === "forbidden" && resolve());
      c.subscribe("sales_eu", "minute", () => {});
    });
    c.close();
    return Object.keys(localStorage).filter((k) => k.includes("alice"));
  }, jwt({ sub: "alice", exp: now() + 600, kpis: ["hr_*"] }));
  assert.deepEqual(left, []);
});

test("getToken refreshes an expiring token on the open connection", async () => {
  const result = await page.evaluate(
    async ({ short, fresh }) => {
      const { KpiStream } = await import("/kpistream.js");
      let calls = 0;
      const c = new KpiStream({
        token: short,
        transports: ["ws"],
        getToken: async () => {
          calls += 1;
          return fresh;
        },
      });
      await new Promise((resolve) => c.subscribe("sales_eu", "minute", () => resolve()));
      // Well past the first token's expiry.
      await new Promise((r) => setTimeout(r, 8000));
      const closes = c.log.filter((e) => e.ev === "closed").map((e) => e.code);
      const state = c._state;
      c.close();
      return { calls, closes, state };
    },
    {
      short: jwt({ sub: "carol", exp: now() + 4, kpis: ["*"] }),
      fresh: jwt({ sub: "carol", exp: now() + 600, kpis: ["*"] }),
    },
  );
  assert.ok(result.calls >= 1, JSON.stringify(result));
  assert.deepEqual(result.closes, [], "the connection was never closed for an expired token");
  assert.equal(result.state, "live");
});
