// useKpi: components on one KPI share one subscription, the last unmount unsubscribes, and StrictMode's double effects subscribe once.
import "./dom.js";

import { test } from "node:test";
import assert from "node:assert/strict";
import { StrictMode, type ReactNode } from "react";
import { act, render } from "@testing-library/react";

import { KpiStream } from "../src/index.js";
import { KpiProvider, useKpi } from "../src/react.js";
import { FakeWebSocket, data, testEnv } from "./fakes.js";

function Value({ kpi, id }: { kpi: string; id: string }): ReactNode {
  const { message, stale, status } = useKpi(kpi, "minute");
  return (
    <span data-testid={id} data-stale={String(stale)} data-status={status}>
      {message ? String(message.stats.last) : "–"}
    </span>
  );
}

/** A client on fakes with its WebSocket open. */
function openClient(): { client: KpiStream; ws: FakeWebSocket } {
  const t = testEnv();
  const client = new KpiStream({ env: t.env, cache: false, transports: ["ws"] });
  const ws = FakeWebSocket.last();
  act(() => ws.open());
  return { client, ws };
}

/** Lets the hook's deferred release (a microtask) run. */
const microtasks = () => act(async () => {});

test("two components on one KPI share one subscription and both show its value", async () => {
  const { client, ws } = openClient();
  const view = render(
    <KpiProvider client={client}>
      <Value kpi="sales" id="a" />
      <Value kpi="sales" id="b" />
      <Value kpi="costs" id="c" />
    </KpiProvider>,
  );
  assert.deepEqual(
    ws.sentOf("subscribe").map((m) => m.kpi),
    ["sales", "costs"],
    "one subscribe per KPI, not per component",
  );
  assert.equal(FakeWebSocket.instances.length, 1, "one connection");
  act(() => ws.receive(data(3, 42)));
  assert.equal(view.getByTestId("a").textContent, "42");
  assert.equal(view.getByTestId("b").textContent, "42");
  assert.equal(view.getByTestId("a").dataset.stale, "false");
  assert.equal(view.getByTestId("a").dataset.status, "live");
  assert.equal(view.getByTestId("c").textContent, "–");
  view.unmount();
  client.close();
});

test("unmounting one keeps the subscription; unmounting both unsubscribes", async () => {
  const { client, ws } = openClient();
  function Page({ a, b }: { a: boolean; b: boolean }): ReactNode {
    return (
      <KpiProvider client={client}>
        {a && <Value kpi="sales" id="a" />}
        {b && <Value kpi="sales" id="b" />}
      </KpiProvider>
    );
  }
  const view = render(<Page a b />);
  view.rerender(<Page a={false} b />);
  await microtasks();
  assert.equal(ws.sentOf("unsubscribe").length, 0, "b still watches");
  act(() => ws.receive(data(4, 7)));
  assert.equal(view.getByTestId("b").textContent, "7");
  view.rerender(<Page a={false} b={false} />);
  await microtasks();
  assert.deepEqual(ws.sentOf("unsubscribe"), [{ type: "unsubscribe", kpi: "sales", period: "minute" }]);
  assert.equal(ws.sentOf("subscribe").length, 1);
  // Mounting again after the release subscribes again.
  view.rerender(<Page a b={false} />);
  assert.equal(ws.sentOf("subscribe").length, 2);
  view.unmount();
  await microtasks();
  assert.equal(ws.sentOf("unsubscribe").length, 2);
  client.close();
});

test("StrictMode's double effects cause no duplicate subscription and no unsubscribe", async () => {
  const { client, ws } = openClient();
  const view = render(
    <StrictMode>
      <KpiProvider client={client}>
        <Value kpi="sales" id="a" />
        <Value kpi="sales" id="b" />
      </KpiProvider>
    </StrictMode>,
  );
  await microtasks();
  assert.equal(ws.sentOf("subscribe").length, 1);
  assert.equal(ws.sentOf("unsubscribe").length, 0);
  act(() => ws.receive(data(5, 9)));
  assert.equal(view.getByTestId("a").textContent, "9");
  view.unmount();
  await microtasks();
  assert.equal(ws.sentOf("unsubscribe").length, 1);
  client.close();
});

test("a change of connection state reaches the components: stale while reconnecting", async () => {
  const { client, ws } = openClient();
  const view = render(
    <KpiProvider client={client}>
      <Value kpi="sales" id="a" />
    </KpiProvider>,
  );
  act(() => ws.receive(data(6, 1)));
  assert.equal(view.getByTestId("a").dataset.stale, "false");
  act(() => ws.drop());
  assert.equal(view.getByTestId("a").dataset.stale, "true");
  assert.equal(view.getByTestId("a").dataset.status, "reconnecting");
  assert.equal(view.getByTestId("a").textContent, "1", "the last value stays shown");
  view.unmount();
  client.close();
});
