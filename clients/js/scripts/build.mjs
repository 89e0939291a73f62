// Builds the package: dist/ (ESM + .d.ts, one module per source file) with tsc, and the
// single-file bundle the gateway serves at /kpistream.js with esbuild. `--check` builds
// the bundle in memory only and fails when the committed copy differs.
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
const repo = join(pkg, "..", "..");
const asset = join(repo, "crates", "kpi-gateway", "assets", "kpistream.js");
const check = process.argv.includes("--check");

const HEADER = `/**
 * kpistream.js — the browser client of the kpistream gateway.
 *
 * GENERATED FILE, do not edit: built from the TypeScript package in
 * clients/js (src/*.ts) by \`npm run build\` there. To change it, edit
 * clients/js/src and run \`cd clients/js && npm ci && npm run build\`;
 * \`npm run check-built\` (run by scripts/test) fails while this copy is stale.
 * It is committed so that \`cargo build\` needs no Node.js.
 *
 * A plain ES module with no dependencies, served by every gateway at the
 * stable path \`/kpistream.js\` (npm users: \`import { KpiStream } from "kpistream"\`,
 * which also carries the TypeScript types and a React hook):
 *
 *     import { KpiStream } from "https://gateway.example/kpistream.js";
 *
 *     const c = new KpiStream({ url: "https://gateway.example", token });
 *     const sub = c.subscribe("revenue_eur", "minute", (msg, meta) => {
 *       // msg: the gateway's data message {type, kpi, period, seq, bucket_start,
 *       //      stats:{count,sum,avg,min,max,last}, previous, event_time, updated_at}
 *       // meta: {source: "ws"|"sse"|"poll"|"cache"|"memory", stale: boolean}
 *     });
 *     // Optional 4th argument: {cadence: "live" (default) | "<N>s" | "<N>m" |
 *     //   "close", encoding: "full" (default) | "delta"}. A throttled
 *     //   subscription hears at most once per N (the newest value); "close"
 *     //   once per closed bucket plus corrections; "delta" asks the gateway
 *     //   for merge patches, applied here (callbacks always get full messages).
 *     //   Handles sharing a kpi+period share the most frequent cadence.
 *     sub.setOptions({ cadence: "5s" }); // resubscribes with the new cadence
 *     sub.switchPeriod("hour");  // unsubscribe + subscribe, same callback
 *     sub.pause(); sub.resume(); // this subscription only (client side)
 *     sub.unsubscribe();
 *     c.pause(); c.resume();     // everything (the gateway conflates meanwhile)
 *     const off = c.on("status", (s) => console.log(s.state, s.transport));
 *     c.close();
 *
 * Options of \`new KpiStream(options)\` (see KpiStreamOptions in clients/js/src/client.ts):
 * url, token, getToken, transports (["ws", "sse", "poll"]), openTimeoutMs,
 * fallbackAfter, upgradeEveryMs, baseBackoffMs, maxBackoffMs, pollWaitSecs,
 * pollIntervalMs, maxStreams, pingEveryMs, pongTimeoutMs, cache, storagePrefix.
 *
 * Guarantees to a callback: it is never called with a lower \`seq\` than a
 * previous call for the same kpi+period (a repeat of the same seq is not
 * delivered either), except when the gateway's history was wiped and it
 * restarted its counter: a snapshot with a lower seq but a later
 * \`updated_at\` is then taken as the new truth. After a reconnect the client
 * resumes every subscription with \`since\` = the last seq it saw, on the
 * gateway it reaches (the same or another one).
 *
 * Events of \`c.on(name, fn)\`: "status" {state: "connecting"|"live"|
 * "reconnecting"|"offline", transport, paused, attempt, retryInMs},
 * "error" (an error message from the gateway), "message" (every applied
 * message), "system" (an admin broadcast). \`sub.fresh\` is true while the
 * gateway confirms the subscription on a live connection; a value shown while
 * it is false may be out of date. \`c.log\` holds the last 5000 events
 * (applied/skipped seqs, transport changes) for debugging and tests.
 */
`;

/** The bundle's text: esbuild's output (readable, not minified) under the header. */
async function bundle() {
  const out = await esbuild.build({
    entryPoints: [join(pkg, "src", "index.ts")],
    bundle: true,
    format: "esm",
    target: "es2022",
    platform: "browser",
    write: false,
    minify: false,
    legalComments: "none",
    charset: "utf8",
    logLevel: "warning",
  });
  const body = out.outputFiles[0].text.replace(/^\/\/ src\//gm, "// clients/js/src/");
  return HEADER + "\n" + body;
}

const fresh = await bundle();
if (check) {
  let committed = "";
  try {
    committed = readFileSync(asset, "utf8");
  } catch {
    /* missing counts as stale */
  }
  if (committed !== fresh) {
    console.error(
      `${relative(repo, asset)} is stale: it differs from a fresh build of clients/js.\n` +
        "Rebuild it with: cd clients/js && npm ci && npm run build",
    );
    process.exit(1);
  }
  console.log(`${relative(repo, asset)} matches a fresh build of clients/js`);
} else {
  rmSync(join(pkg, "dist"), { recursive: true, force: true });
  execFileSync(process.execPath, [join(pkg, "node_modules", "typescript", "bin", "tsc"), "-p", join(pkg, "tsconfig.build.json")], {
    stdio: "inherit",
  });
  writeFileSync(asset, fresh);
  console.log(`built dist/ and ${relative(repo, asset)}`);
}
