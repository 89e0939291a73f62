#!/usr/bin/env bash
# Reproduces the numbers in benches/README.md on this machine. Takes about
# 27 minutes; not part of CI. Every run is bounded and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/usr/local/sbin"
cargo build --release -p kpi-loadgen -p kpi-gateway -p kpi-ingest -p kpi-aggregator
LG=target/release/kpi-loadgen
OUT=benches/results
mkdir -p "$OUT"

# Throughput and latency, coalescing off, the three targets one after another.
$LG compare --name a-1k-conns-10-kpis-100ps --connections 1000 --kpis 10 --rate 100 \
    --duration 20 --warmup 3 --out "$OUT" > /dev/null
$LG compare --name b-10k-conns-100-kpis-10ps --connections 10000 --kpis 100 --rate 10 \
    --duration 20 --warmup 3 --out "$OUT" > /dev/null

# Memory per idle connection (one subscription each), 15,000 connections.
$LG compare --name c-idle-15k-conns --connections 15000 --kpis 100 --rate 0 \
    --duration 1 --settle 5 --out "$OUT" > /dev/null

# Four gateway processes holding 60,000 connections (four client worker
# processes of 15,000), updates flowing.
$LG kpistream --gateways 4 --connections 60000 --kpis 100 --rate 1 \
    --duration 20 --warmup 3 --out "$OUT/d-60k-conns-4-gateways" > /dev/null

# Where latency turns: B's load per connection (100 KPIs, 10/s each) at a
# quarter, half, three quarters and all of its 10,000 connections, kpistream
# and plain one after the other.
for n in 2500 5000 7500 10000; do
    for t in kpistream plain; do
        $LG $t --connections $n --kpis 100 --rate 10 --duration 20 --warmup 3 \
            --out "$OUT/e-latency-sweep/$t-$n" > /dev/null
    done
done

# Many KPIs: 3,000 of them, one connection each, about 1,000 events/s in all.
$LG kpistream --connections 3000 --kpis 3000 --rate 0.33 --duration 20 --warmup 3 \
    --out "$OUT/f-3k-kpis" > /dev/null

# Ingest throughput per format, one run: gRPC PublishStream (the baseline),
# JSON array, NDJSON and InfluxDB line protocol into one kpi-ingest on NATS.
$LG ingest-formats --events 100000 --batch 1000 --concurrency 4 \
    --out "$OUT/g-ingest-formats" > "$OUT/g-ingest-formats.md"

# Cadence and encoding: bytes and messages per dashboard-hour for a 20-KPI
# dashboard on kpi-stack --demo, six variants in one 3-minute window.
cargo build --release -p kpi-stack
$LG dashboard --duration 180 --warmup 3 --out "$OUT/h-dashboard" > "$OUT/h-dashboard.md"

# Gateway CPU per connection-second at B's load, live versus 5s, back to back.
for c in live 5s; do
    $LG kpistream --connections 10000 --kpis 100 --rate 10 --duration 20 --warmup 3 \
        --cadence "$c" --out "$OUT/i-cadence-$c" > /dev/null
done

# Micro-benchmarks of the hot paths.
cargo bench -p kpi-aggregator --bench apply
cargo bench -p kpi-gateway --bench fanout

# Pipeline capacity (issue 17): the event rate stepped up through ingest and
# the aggregator until they fall behind, beside raw JetStream climbing the
# same steps; the first layout (4 partitions, 1 aggregator) is the headline,
# the others make the scaling table. About 15 minutes.
$LG capacity --partitions 4,1,2,8 --aggregators 1,2 --step-secs 10 \
    --out "$OUT/j-capacity" > /dev/null
