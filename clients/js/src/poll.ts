/** HTTP long polling of `/api/kpi/<code>/updates`: the transport of last resort, and SSE's helper past its stream budget. */

import { backoffDelay } from "./backoff.js";
import type { PollBody } from "./messages.js";
import { cadenceMs } from "./options.js";
import { sinceOf, type Topic } from "./topic.js";
import type { Driver, DriverHost } from "./driver.js";
import { KpiHttpError } from "./http-error.js";

/** Extra time a long poll gets over its `wait` before it counts as failed. */
const POLL_GRACE_SECS = 10;

/** Told by a poller whether its polls succeed; null for a helper (SSE's), whose owner judges by its streams. */
export interface PollOwner {
  ok(): void;
  failed(): void;
}

interface Loop {
  abort: AbortController;
  failures: number;
}

/**
 * One polling loop per topic. Long polls while they fit in the browser's
 * connection budget; with more topics, short polls every `pollIntervalMs`
 * so that no request waits behind another's long wait.
 */
export class Poller {
  private readonly loops = new Map<string, Loop>();

  constructor(
    private readonly c: DriverHost,
    private readonly owner: PollOwner | null,
  ) {}

  has(topic: Topic): boolean {
    return this.loops.has(topic.key);
  }

  add(topic: Topic): void {
    if (this.loops.has(topic.key)) return;
    const loop: Loop = { abort: new AbortController(), failures: 0 };
    this.loops.set(topic.key, loop);
    void this.run(topic, loop);
  }

  remove(topic: Topic): void {
    const loop = this.loops.get(topic.key);
    if (loop) {
      loop.abort.abort();
      this.loops.delete(topic.key);
    }
  }

  close(): void {
    for (const l of this.loops.values()) l.abort.abort();
    this.loops.clear();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.c.env.setTimeout(resolve, ms));
  }

  /** One request, aborted by the loop's end or by its own deadline. */
  private async poll(path: string, params: Record<string, unknown>, loop: Loop, deadlineMs: number): Promise<PollBody> {
    const env = this.c.env;
    const req = new AbortController();
    const onAbort = (): void => req.abort();
    loop.abort.signal.addEventListener("abort", onAbort);
    const timer = env.setTimeout(() => req.abort(), deadlineMs);
    try {
      return (await this.c._getJson(path, params, req.signal)) as PollBody;
    } finally {
      env.clearTimeout(timer);
      loop.abort.signal.removeEventListener("abort", onAbort);
    }
  }

  private async run(topic: Topic, loop: Loop): Promise<void> {
    const c = this.c;
    const o = c._opts;
    while (this.loops.get(topic.key) === loop) {
      const long = this.owner !== null && this.loops.size <= o.maxStreams;
      const wait = long ? o.pollWaitSecs : 0;
      const params: Record<string, unknown> = { period: topic.period, wait, since: sinceOf(topic) };
      // A poll holds a throttled answer up to its longest wait; beyond that
      // this loop keeps the rhythm itself. Polls never carry patches.
      const every = cadenceMs(topic.cadence);
      const spaced = every !== null && every > o.pollWaitSecs * 1000;
      if (topic.cadence !== "live" && !spaced) params.cadence = topic.cadence;
      try {
        const body = await this.poll(`/api/kpi/${topic.kpi}/updates`, params, loop, (wait + POLL_GRACE_SECS) * 1000);
        if (loop.abort.signal.aborted) return;
        loop.failures = 0;
        c._confirm(topic);
        this.owner?.ok();
        for (const m of body.messages ?? []) c._receive(m, "poll");
        c._status();
        if (spaced) await this.sleep(every);
        else if (!long) await this.sleep(o.pollIntervalMs);
      } catch (e) {
        if (loop.abort.signal.aborted) return;
        loop.failures += 1;
        this.owner?.failed();
        if (e instanceof KpiHttpError && e.status >= 400 && e.status < 500) c._httpError(e);
        await this.sleep(backoffDelay(loop.failures, o, () => c.env.random()));
      }
    }
  }
}

/** Long polling as the client's transport. */
export class PollDriver implements Driver, PollOwner {
  private readonly poller: Poller;
  private opened = false;
  private done = false;

  constructor(private readonly c: DriverHost) {
    this.poller = new Poller(c, this);
  }

  start(): void {
    const topics = this.c._topicList();
    for (const t of topics) this.add(t);
    if (topics.length === 0) this.ok();
  }

  add(topic: Topic): void {
    this.poller.add(topic);
  }

  remove(topic: Topic): void {
    this.poller.remove(topic);
  }

  ok(): void {
    if (this.done) return;
    if (!this.opened || this.c._state !== "live") {
      this.opened = true;
      this.c._opened(this);
    }
  }

  failed(): void {
    if (this.done) return;
    this.c._unconfirmAll();
    this.c._setState(this.c.env.online() ? "reconnecting" : "offline");
  }

  close(): void {
    this.done = true;
    this.poller.close();
  }
}
