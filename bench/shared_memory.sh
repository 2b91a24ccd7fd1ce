#!/usr/bin/env bash
# What the shared duplicate memory costs the hop: the gateway with REDIS_URL (a
# redis-server on loopback) against the same gateway without it, in one run, each
# callback a decision new to the gateway (so every one is claimed in Redis and
# recorded there after its delivery), over plain HTTP.
#
#   bench/shared_memory.sh                          # about 2 minutes after the build
#   DURATION=3 ROUNDS=2 CONNECTIONS="8" bench/shared_memory.sh
#
# Needs redis-server (Debian: redis-server). Prints a Markdown table and writes
# results.jsonl to $OUT (target/bench-shared by default). See docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

DURATION=${DURATION:-4}           # seconds of each measured run
ROUNDS=${ROUNDS:-3}               # measured runs per mode and load, alternating
CONNECTIONS=${CONNECTIONS:-"1 8 32"}
COUNT=${COUNT:-100000}            # distinct decisions available to one run
PORT=${PORT:-18090}               # first of four consecutive loopback ports
OUT=${OUT:-$root/target/bench-shared}
TARGET=${CARGO_TARGET_DIR:-$root/target}
PROFILE=${PROFILE:-release}       # debug only to try the script itself: its figures mean nothing

up_port=$PORT gate_port=$((PORT + 1)) gate_admin=$((PORT + 2)) redis_port=$((PORT + 3))
command -v redis-server >/dev/null || { echo "bench: redis-server is missing (Debian package redis-server)" >&2; exit 1; }

echo "== building ($PROFILE)" >&2
cargo build --profile "${PROFILE/debug/dev}" --quiet --bin feishu-gate --example bench_upstream --example bench_load

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_workspace bench-shared
mkdir -p "$OUT"
results=$OUT/results.jsonl
: >"$results"

wait_port() {
  for _ in $(seq 500); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return
    sleep 0.01
  done
  echo "bench: nothing listens on $1" >&2
  exit 1
}

"$TARGET/$PROFILE/examples/bench_upstream" "127.0.0.1:$up_port" 2>>"$work/upstream.log" &
pids+=($!)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_port "$up_port"
wait_port "$redis_port"
# One inline command to the server, its one-line answer read and dropped.
redis_cli() {
  exec 3<>/dev/tcp/127.0.0.1/"$redis_port"
  printf '%s\r\n' "$*" >&3
  read -r _ <&3
  exec 3<&-
}

echo "{\"kind\":\"machine\",\"cpus\":$(nproc),\"load_before\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"redis\":\"$(redis-server --version | cut -d' ' -f3)\",\"date\":\"$(date -u +%FT%TZ)\",\"commit\":\"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\"}" >>"$results"

is_ready() {
  (exec 3<>/dev/tcp/127.0.0.1/"$gate_admin" &&
    printf 'GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3 &&
    read -r status <&3 && [[ $status == "HTTP/1.1 200"* ]]) 2>/dev/null
}

# run <mode> <connections> <round>: a fresh gateway (its local memory empty), one load.
run() {
  local mode=$1 conns=$2 round=$3 redis_env=() out
  if [ "$mode" = on ]; then
    redis_cli FLUSHALL
    redis_env=(FEISHU_GATE_REDIS_URL=redis://127.0.0.1:$redis_port/)
  fi
  env FEISHU_GATE_LISTEN=127.0.0.1:$gate_port FEISHU_GATE_ADMIN_LISTEN=127.0.0.1:$gate_admin \
    FEISHU_GATE_UPSTREAM_URL=http://127.0.0.1:$up_port/legacy/approve \
    FEISHU_GATE_TOKEN="$token" FEISHU_GATE_KEY="$key" \
    FEISHU_GATE_RATE_LIMIT_RPS=0 FEISHU_GATE_DEDUP_TTL_SECS=600 "${redis_env[@]}" \
    "$TARGET/$PROFILE/feishu-gate" serve >"$work/gateway-$mode.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  until is_ready; do sleep 0.01; done
  out=$("$TARGET/$PROFILE/examples/bench_load" "http://127.0.0.1:$gate_port/" "$conns" "$DURATION" "$COUNT" "$((round * COUNT))")
  if grep -q '"level":"WARN"\|"level":"ERROR"' "$work/gateway-$mode.log"; then
    echo "bench: the gateway logged warnings; first:" >&2
    grep -m1 '"level":"WARN"\|"level":"ERROR"' "$work/gateway-$mode.log" >&2
  fi
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  echo "{\"kind\":\"load\",\"mode\":\"$mode\",\"connections\":$conns,\"round\":$round,\"result\":$out}" >>"$results"
  echo "   redis $mode c=$conns round $round: $out" >&2
}

for conns in $CONNECTIONS; do
  for round in $(seq "$ROUNDS"); do
    # Taking turns, the first alternating, so noise from elsewhere falls on both alike.
    if (( round % 2 )); then run off "$conns" "$round"; run on "$conns" "$round"
    else run on "$conns" "$round"; run off "$conns" "$round"; fi
  done
done
echo "{\"kind\":\"end\",\"load_after\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >>"$results"

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
machine = rows[0]
loads = [r for r in rows if r["kind"] == "load"]
print(f"{machine['cpus']} CPUs, Redis {machine['redis']}, load {machine['load_before']} before, "
      f"{rows[-1]['load_after']} after, commit {machine['commit']}\n")
print("| connections | shared memory | requests/s | p50 | p99 | p99.9 | failed |")
print("|---|---|---|---|---|---|---|")
for conns in sorted({r["connections"] for r in loads}):
    for mode in ("off", "on"):
        runs = [r["result"] for r in loads if r["connections"] == conns and r["mode"] == mode]
        runs.sort(key=lambda r: r["rps"])
        median = runs[len(runs) // 2]
        total = sum(r["requests"] for r in runs) / sum(r["elapsed_s"] for r in runs)
        exhausted = " (decisions ran out)" if any(r["exhausted"] for r in runs) else ""
        print(f"| {conns} | {mode} | {total:,.0f}{exhausted} | {median['p50_us']/1000:.2f} ms | "
              f"{median['p99_us']/1000:.2f} ms | {median['p999_us']/1000:.2f} ms | "
              f"{sum(r['failed'] for r in runs)} |")
PY
