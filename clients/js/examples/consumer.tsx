// A strict TypeScript app using the package as a consumer would: through its published name and built types (dist/*.d.ts).
import { StrictMode, useEffect, useState, type ReactNode } from "react";
import {
  KpiStream,
  cadenceMs,
  type Cadence,
  type ConnectionStatus,
  type DataMessage,
  type ErrorMessage,
  type PatchMessage,
  type ServerMessage,
  type Stats,
  type SystemMessage,
} from "kpistream";
import { KpiProvider, useKpi, type KpiState } from "kpistream/react";

const token: string | undefined = new URLSearchParams(location.search).get("token") ?? undefined;
const client = new KpiStream({ url: "https://gateway.example", token, transports: ["ws", "sse"], cache: true });

// Every message of the protocol is typed; nullable stats must be checked before use.
function describe(m: ServerMessage): string {
  switch (m.type) {
    case "snapshot":
    case "update":
      return `${m.kpi}/${m.period} #${m.seq}: ${m.stats.last === null ? "empty" : m.stats.last.toFixed(2)}`;
    case "patch":
      return `patch ${m.base_seq} -> ${m.seq}`;
    case "error":
      return `${m.code}: ${m.message}`;
    case "system":
      return m.maintenance === undefined ? m.message : `maintenance ${m.maintenance ? "on" : "off"}`;
    case "pong":
      return "pong";
    default:
      return m.type;
  }
}

const average = (s: Stats): number => s.avg ?? 0;
const previousLast = (m: DataMessage): number | null => m.previous?.stats.last ?? null;
// @ts-expect-error: hours are not a cadence unit
const hourly: Cadence = "1h";
const every: Cadence[] = ["live", "5s", "10m", "close"];
const ms: (number | null)[] = every.map((c) => cadenceMs(c));

const sub = client.subscribe(
  "revenue_eur",
  "minute",
  (msg: DataMessage, meta) => {
    if (meta.stale) return;
    console.log(describe(msg), average(msg.stats), previousLast(msg), meta.source);
  },
  { cadence: "5s", encoding: "delta" },
);
sub.switchPeriod("hour").setOptions({ cadence: "close" });
const offStatus = client.on("status", (s: ConnectionStatus) => console.log(s.state, s.transport, s.retryInMs));
const offError = client.on("error", (e: ErrorMessage) => console.warn(e.code, e.kpi ?? "connection"));
const offSystem = client.on("system", (m: SystemMessage) => console.info(m.message, m.at));

// @ts-expect-error: periods are checked at compile time
client.subscribe("revenue_eur", "week", () => {});
// @ts-expect-error: so are cadences
client.subscribe("revenue_eur", "minute", () => {}, { cadence: "often" });
// @ts-expect-error: and encodings
client.subscribe("revenue_eur", "minute", () => {}, { encoding: "gzip" });

function Tile({ code }: { code: string }): ReactNode {
  const { message, status, stale }: KpiState = useKpi(code, "minute", { cadence: "5s" });
  const [seen, setSeen] = useState(0);
  useEffect(() => setSeen((n) => n + 1), [message]);
  if (!message) return <p>{status === "live" ? "no data yet" : status}</p>;
  return (
    <p className={stale ? "stale" : undefined}>
      {code}: {message.stats.last ?? "–"} ({seen} renders, updated {message.updated_at})
    </p>
  );
}

export function App(): ReactNode {
  return (
    <StrictMode>
      <KpiProvider client={client}>
        <Tile code="revenue_eur" />
        <Tile code="revenue_eur" />
      </KpiProvider>
    </StrictMode>
  );
}

export function stop(): void {
  const patch: PatchMessage | null = null;
  console.log(patch, hourly, ms);
  offStatus();
  offError();
  offSystem();
  sub.unsubscribe();
  client.close();
}
