#!/usr/bin/env bash
# One-command local kpistream cluster of real processes on 127.0.0.1:
# a 3-node NATS cluster with JetStream (R3 streams), kpi-ingest, two
# kpi-aggregator replicas (partitions split by replica index), two kpi-gateways
# behind HAProxy (deploy/haproxy/haproxy.cfg.tmpl: WebSocket-aware, health
# checks on /readyz).
#
#   deploy/local-cluster.sh up               start everything, wait until ready
#   deploy/local-cluster.sh status           what runs, and whether it is ready
#   deploy/local-cluster.sh down             SIGTERM everything (drain), then clean up
#   deploy/local-cluster.sh rolling-restart  restart the gateways one at a time
#   deploy/local-cluster.sh logs [NAME]      tail the logs (NAME: gateway-1, nats-2, ...)
#
# Then: dashboards at http://127.0.0.1:8080/ (the balancer), publishers on
# gRPC 127.0.0.1:50051, HAProxy stats at http://127.0.0.1:8404/stats.
#
# Settings (environment):
#   KPI_BIN_DIR          where the binaries are (default: target/release, else target/debug)
#   KPI_CLUSTER_DIR      state: pid files, logs, NATS stores (default /tmp/kpistream-local-cluster)
#   KPI_CLUSTER_PORT_OFFSET  added to every port, to run beside something else (default 0)
#   KPI_PARTITIONS       aggregator partitions (default 4)
#
# Every process's pid is in $KPI_CLUSTER_DIR/pids; `down` stops exactly those
# (checking each pid still runs the program it started), so nothing is left
# running and nothing else is touched. A failed `up` stops what it started.
# Needs: nats-server, haproxy, curl (scripts/setup-deps installs them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$PATH:/usr/sbin:/usr/local/sbin"
STATE="${KPI_CLUSTER_DIR:-/tmp/kpistream-local-cluster}"
OFF="${KPI_CLUSTER_PORT_OFFSET:-0}"
PARTITIONS="${KPI_PARTITIONS:-4}"
AGGREGATORS=2
GATEWAYS=2
NATS_NODES=3
HOST=127.0.0.1

port() { echo $(($1 + OFF)); }
BALANCER_PORT=$(port 8080)
STATS_PORT=$(port 8404)
INGEST_GRPC=$(port 50051)
INGEST_HTTP=$(port 9101)
agg_port() { port $((9102 + $1)); }          # aggregator i (0-based)
gw_port() { port $((8080 + $1)); }           # gateway i (1-based): 8081, 8082
nats_port() { port $((4221 + $1)); }         # node i (1-based): 4222..4224
nats_cluster_port() { port $((6221 + $1)); } # 6222..6224
nats_http_port() { port $((8221 + $1)); }    # 8222..8224

nats_urls() {
    local urls=() i
    for ((i = 1; i <= NATS_NODES; i++)); do urls+=("nats://$HOST:$(nats_port "$i")"); done
    (IFS=,; echo "${urls[*]}")
}

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

find_bins() {
    if [ -n "${KPI_BIN_DIR:-}" ]; then
        BIN="$KPI_BIN_DIR"
    elif [ -x "$ROOT/target/release/kpi-gateway" ]; then
        BIN="$ROOT/target/release"
    else
        BIN="$ROOT/target/debug"
    fi
    local b
    for b in kpi-ingest kpi-aggregator kpi-gateway; do
        [ -x "$BIN/$b" ] || die "$BIN/$b not found: run 'cargo build --release --bins' (or set KPI_BIN_DIR)"
    done
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found: install it (scripts/setup-deps, or apt-get install $2)"
}

# start NAME PROGRAM ARGS... : runs PROGRAM in the background, immune to the
# terminal's hangup, output to logs/NAME.log, pid to pids/NAME.pid.
start() {
    local name="$1"; shift
    if is_running "$name"; then die "$name already runs (pid $(cat "$STATE/pids/$name.pid")); run 'down' first"; fi
    nohup "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1 &
    echo $! >"$STATE/pids/$name.pid"
    echo "$1" >"$STATE/pids/$name.cmd"
    log "started $name (pid $!)"
}

# is_running NAME: the pid file's process is alive and still runs the program started.
is_running() {
    local pidf="$STATE/pids/$1.pid" pid prog
    [ -f "$pidf" ] || return 1
    pid="$(cat "$pidf")"
    [ -n "$pid" ] && alive "$pid" || return 1
    prog="$(cat "$STATE/pids/$1.cmd" 2>/dev/null || true)"
    [ -z "$prog" ] && return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$(basename "$prog")"
}

# alive PID: the process exists and is not a zombie waiting for init to reap it.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    [ "$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]
}

# stop NAME [SECS]: SIGTERM, wait up to SECS (default 20) for a drained exit, then SIGKILL.
stop() {
    local name="$1" secs="${2:-20}" pid i
    if is_running "$name"; then
        pid="$(cat "$STATE/pids/$name.pid")"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < secs * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "$name (pid $pid) did not exit in ${secs}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        else
            log "stopped $name (pid $pid)"
        fi
    fi
    rm -f "$STATE/pids/$name.pid" "$STATE/pids/$name.cmd"
}

http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true; }

# wait_ready NAME URL [SECS]: until URL answers 200, or fail with the log's tail.
wait_ready() {
    local name="$1" url="$2" secs="${3:-45}" i
    for ((i = 0; i < secs * 10; i++)); do
        [ "$(http_code "$url")" = 200 ] && return 0
        is_running "$name" || { tail -n 30 "$STATE/logs/$name.log" >&2; die "$name exited"; }
        sleep 0.1
    done
    tail -n 30 "$STATE/logs/$name.log" >&2
    die "$name not ready at $url after ${secs}s"
}

write_nats_conf() {
    local i="$1" j routes=()
    for ((j = 1; j <= NATS_NODES; j++)); do
        [ "$j" = "$i" ] || routes+=("\"nats://$HOST:$(nats_cluster_port "$j")\"")
    done
    mkdir -p "$STATE/nats/n$i"
    cat >"$STATE/nats/n$i.conf" <<EOF
# Generated by deploy/local-cluster.sh: NATS node n$i of the local cluster.
server_name: n$i
listen: $HOST:$(nats_port "$i")
http: $HOST:$(nats_http_port "$i")
jetstream {
  store_dir: "$STATE/nats/n$i"
  max_memory_store: 256MB
  max_file_store: 2GB
}
cluster {
  name: kpi-local
  listen: $HOST:$(nats_cluster_port "$i")
  routes: [$(IFS=,; echo "${routes[*]}")]
}
EOF
}

start_gateway() {
    local i="$1"
    start "gateway-$i" "$BIN/kpi-gateway" --listen "$HOST:$(gw_port "$i")" \
        --nats-url "$(nats_urls)" --partitions "$PARTITIONS" --replicas 3 --drain-secs 5
    wait_ready "gateway-$i" "http://$HOST:$(gw_port "$i")/readyz"
}

# wait_balancer GW STATE: until HAProxy reports server gwN as UP (or DOWN).
wait_balancer() {
    local name="gw$1" want="$2" i
    for ((i = 0; i < 150; i++)); do
        curl -s -m 2 "http://$HOST:$STATS_PORT/stats;csv" 2>/dev/null |
            awk -F, -v n="$name" -v w="$want" '$1=="gateways" && $2==n && index($18,w)==1 {found=1} END {exit !found}' &&
            return 0
        sleep 0.1
    done
    die "HAProxy did not see $name $want"
}

names_in_stop_order() {
    local i
    echo balancer
    for ((i = 1; i <= GATEWAYS; i++)); do echo "gateway-$i"; done
    for ((i = 0; i < AGGREGATORS; i++)); do echo "aggregator-$i"; done
    echo ingest
    for ((i = NATS_NODES; i >= 1; i--)); do echo "nats-$i"; done
}

cmd_up() {
    need nats-server nats-server
    need haproxy haproxy
    need curl curl
    find_bins
    mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/nats"
    local name
    for name in $(names_in_stop_order); do
        if is_running "$name"; then die "$name already runs (pid $(cat "$STATE/pids/$name.pid")); run '$0 down' first"; fi
    done
    # Whatever fails from here on, stop what was started.
    trap 'rc=$?; if [ "$rc" -ne 0 ]; then log "up failed; stopping what was started"; cmd_down; fi' EXIT
    local i
    for ((i = 1; i <= NATS_NODES; i++)); do
        write_nats_conf "$i"
        start "nats-$i" "$(command -v nats-server)" -c "$STATE/nats/n$i.conf"
    done
    for ((i = 1; i <= NATS_NODES; i++)); do
        wait_ready "nats-$i" "http://$HOST:$(nats_http_port "$i")/healthz"
    done
    # JetStream needs a meta leader before streams can be created.
    for ((i = 0; i < 300; i++)); do
        curl -s -m 2 "http://$HOST:$(nats_http_port 1)/jsz" | grep -q '"leader"' && break
        sleep 0.1
    done
    start ingest "$BIN/kpi-ingest" --listen "$HOST:$INGEST_GRPC" --http-listen "$HOST:$INGEST_HTTP" \
        --nats-url "$(nats_urls)" --partitions "$PARTITIONS" --replicas 3
    wait_ready ingest "http://$HOST:$INGEST_HTTP/readyz"
    for ((i = 0; i < AGGREGATORS; i++)); do
        start "aggregator-$i" "$BIN/kpi-aggregator" --listen "$HOST:$(agg_port "$i")" \
            --nats-url "$(nats_urls)" --partitions "$PARTITIONS" --replicas 3 \
            --replica-index "kpi-aggregator-$i" --replica-count "$AGGREGATORS"
    done
    for ((i = 0; i < AGGREGATORS; i++)); do
        wait_ready "aggregator-$i" "http://$HOST:$(agg_port "$i")/readyz"
    done
    local servers=""
    for ((i = 1; i <= GATEWAYS; i++)); do
        servers+="    server gw$i $HOST:$(gw_port "$i") check"$'\n'
    done
    awk -v servers="${servers%$'\n'}" '{ if ($0 == "@SERVERS@") print servers; else print }' \
        "$ROOT/deploy/haproxy/haproxy.cfg.tmpl" |
        sed -e "s/@BIND@/$HOST/g" -e "s/@BALANCER_PORT@/$BALANCER_PORT/" -e "s/@STATS_PORT@/$STATS_PORT/" \
            >"$STATE/haproxy.cfg"
    haproxy -c -q -f "$STATE/haproxy.cfg"
    start balancer "$(command -v haproxy)" -db -f "$STATE/haproxy.cfg"
    for ((i = 1; i <= GATEWAYS; i++)); do start_gateway "$i"; done
    for ((i = 1; i <= GATEWAYS; i++)); do wait_balancer "$i" UP; done
    trap - EXIT
    log "cluster up: dashboards http://$HOST:$BALANCER_PORT/  gRPC $HOST:$INGEST_GRPC  stats http://$HOST:$STATS_PORT/stats"
}

cmd_down() {
    [ -d "$STATE/pids" ] || { log "nothing to stop ($STATE/pids does not exist)"; return 0; }
    local name
    for name in $(names_in_stop_order); do stop "$name"; done
    # Anything else a pid file names (e.g. from an older layout).
    for name in "$STATE"/pids/*.pid; do
        [ -e "$name" ] || continue
        stop "$(basename "$name" .pid)"
    done
    log "cluster down (logs kept in $STATE/logs)"
}

cmd_status() {
    local name url code state all_ok=0 i
    printf '%-14s %-8s %-8s %s\n' NAME PID STATE CHECK
    for name in $(names_in_stop_order | tac); do
        case "$name" in
            nats-*) url="http://$HOST:$(nats_http_port "${name#nats-}")/healthz" ;;
            ingest) url="http://$HOST:$INGEST_HTTP/readyz" ;;
            aggregator-*) url="http://$HOST:$(agg_port "${name#aggregator-}")/readyz" ;;
            gateway-*) url="http://$HOST:$(gw_port "${name#gateway-}")/readyz" ;;
            balancer) url="http://$HOST:$BALANCER_PORT/readyz" ;;
        esac
        if is_running "$name"; then
            code="$(http_code "$url")"
            if [ "$code" = 200 ]; then state=ready; else state="not-ready($code)"; all_ok=1; fi
            printf '%-14s %-8s %-8s %s\n' "$name" "$(cat "$STATE/pids/$name.pid")" "$state" "$url"
        else
            printf '%-14s %-8s %-8s %s\n' "$name" - stopped "$url"
            all_ok=1
        fi
    done
    if curl -s -m 2 "http://$HOST:$STATS_PORT/stats;csv" >/dev/null 2>&1; then
        echo "balancer view:"
        for ((i = 1; i <= GATEWAYS; i++)); do
            curl -s -m 2 "http://$HOST:$STATS_PORT/stats;csv" |
                awk -F, -v n="gw$i" '$1=="gateways" && $2==n {printf "  %s %s (sessions %s)\n", $2, $18, $5}'
        done
    fi
    return "$all_ok"
}

cmd_rolling_restart() {
    find_bins
    local i
    for ((i = 1; i <= GATEWAYS; i++)); do
        stop "gateway-$i"
        wait_balancer "$i" DOWN
        start_gateway "$i"
        wait_balancer "$i" UP
    done
    log "gateways restarted"
}

cmd_logs() {
    if [ -n "${1:-}" ]; then tail -n 100 -f "$STATE/logs/$1.log"; else tail -n 20 -f "$STATE"/logs/*.log; fi
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    rolling-restart) cmd_rolling_restart ;;
    logs) shift; cmd_logs "${1:-}" ;;
    *) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
