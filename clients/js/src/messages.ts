/**
 * The gateway's wire protocol in types: what a dashboard receives and sends.
 *
 * Field names and nullability follow the gateway (crates/kpi-core/src/message.rs):
 * a field that the gateway writes as `null` is `| null` here, and one it may
 * leave out is optional.
 */

/** The length of a bucket. */
export type Period = "minute" | "hour" | "day";

/**
 * How often a subscription hears: `live` (every coalesced change, the
 * default), `<N>s` / `<N>m` (at most once per N, always the newest), or
 * `close` (once per closed bucket, plus corrections of closed buckets).
 */
export type Cadence = "live" | "close" | `${number}s` | `${number}m`;

/** `full` messages (the default), or `delta`: RFC 7386 merge patches after a first full message. */
export type Encoding = "full" | "delta";

/** The transports the client speaks, in its default order of preference. */
export type TransportName = "ws" | "sse" | "poll";

/** A bucket's aggregates; `avg`, `min`, `max` and `last` are `null` while the bucket is empty. */
export interface Stats {
  count: number;
  sum: number;
  avg: number | null;
  min: number | null;
  max: number | null;
  last: number | null;
}

/** A closed bucket: where it started and what it held. */
export interface BucketView {
  /** RFC 3339 UTC. */
  bucket_start: string;
  stats: Stats;
}

/** The fields every data message carries. */
interface DataFields {
  kpi: string;
  period: Period;
  /** Grows by one with every update of this KPI and period; 0 means "no data yet". */
  seq: number;
  /** RFC 3339 UTC start of the current bucket. */
  bucket_start: string;
  stats: Stats;
  /** The closed bucket before this one, or `null` when none is known. */
  previous: BucketView | null;
  /** RFC 3339: event time of the latest event applied, `null` before the first event. */
  event_time: string | null;
  /** RFC 3339: when the aggregator published this value. */
  updated_at: string;
  /** Present (true) when this revises a bucket older than the current one (a late event). */
  correction?: boolean;
}

/** The first message of a subscription: the current value. */
export interface SnapshotMessage extends DataFields {
  type: "snapshot";
}

/** A later value of a subscription. */
export interface UpdateMessage extends DataFields {
  type: "update";
}

/** A full data message, as every callback of this client receives it. */
export type DataMessage = SnapshotMessage | UpdateMessage;

/** A JSON value. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** An RFC 7386 merge patch over a JSON object. */
export type MergePatch = { [key: string]: JsonValue };

/**
 * With `encoding: "delta"`: the difference between update `base_seq` and
 * update `seq` of this subscription. This client applies patches itself, so
 * callbacks never see one.
 */
export interface PatchMessage {
  type: "patch";
  kpi: string;
  period: Period;
  base_seq: number;
  seq: number;
  patch: MergePatch;
}

/** Machine-readable error codes the gateway sends (not exhaustive: others may be added). */
export type KnownErrorCode =
  | "bad_request"
  | "invalid_kpi"
  | "invalid_period"
  | "invalid_cadence"
  | "invalid_encoding"
  | "unauthorized"
  | "token_expired"
  | "forbidden"
  | "rate_limited"
  | "too_many_connections"
  | "too_many_topics"
  | "slow_consumer"
  | "unavailable";

/** `{"type":"error"}`: a request refused, with the subscription it is about when there is one. */
export interface ErrorMessage {
  type: "error";
  code: KnownErrorCode | (string & {});
  message: string;
  kpi?: string;
  period?: string;
}

/** An admin broadcast; `maintenance` is present on maintenance events (the new state). */
export interface SystemMessage {
  type: "system";
  message: string;
  /** RFC 3339: when the admin call was made. */
  at: string;
  maintenance?: boolean;
}

/** The gateway's acknowledgement of a `/ws` client message (without kpi/period when about the whole connection). */
export interface ReplyMessage {
  type: "subscribed" | "unsubscribed" | "paused" | "resumed" | "authenticated";
  kpi?: string;
  period?: Period;
}

/** The answer to a `/ws` ping, echoing its id (`null` when the ping had none). */
export interface PongMessage {
  type: "pong";
  id: JsonValue;
}

/** Everything the gateway sends on `/ws`. */
export type ServerMessage = DataMessage | PatchMessage | ErrorMessage | SystemMessage | ReplyMessage | PongMessage;

/** What a dashboard sends on `/ws`. */
export type ClientMessage =
  | {
      type: "subscribe";
      kpi: string;
      period: Period;
      since?: number;
      cadence?: Exclude<Cadence, "live">;
      encoding?: "delta";
    }
  | { type: "unsubscribe"; kpi: string; period: Period }
  | { type: "pause" | "resume"; kpi?: string; period?: Period }
  | { type: "ping"; id?: JsonValue }
  | { type: "auth"; token: string };

/** One closed bucket of `GET /api/kpi/<code>/history`. */
export interface HistoryBucket {
  bucket_start: string;
  /** The seq of the record this bucket's stats come from (the latest correction). */
  seq: number;
  stats: Stats;
}

/** `GET /api/kpi/<code>/history`: closed buckets, oldest first. */
export interface HistoryBody {
  kpi: string;
  period: Period;
  buckets: HistoryBucket[];
}

/** `GET /api/kpi/<code>/updates`: the data messages a poller missed (polls never carry patches). */
export interface PollBody {
  kpi: string;
  period: Period;
  messages: DataMessage[];
}

/** `GET /api/kpis`: the codes with published updates the caller may read. */
export interface KpiList {
  kpis: string[];
}
