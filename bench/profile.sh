#!/usr/bin/env bash
# Instruction and allocation profiles of the gateway under load, counted per
# request: deterministic, so they can be compared on a busy machine where
# wall-clock figures cannot.
#
#   bench/profile.sh callgrind   # instructions per request, top functions
#   bench/profile.sh dhat        # heap allocations per request
#   bench/profile.sh syscalls    # system calls per request (strace -c)
#
# The gateway runs under the tool with the benchmark's configuration and
# bodies, loaded by wrk over 8 loopback connections for $SECONDS_LOADED
# seconds (default 10) after a warm-up. GATEWAY_BIN profiles another build.
set -euo pipefail
cd "$(dirname "$0")/.."
tool=${1:-callgrind}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
PORT=${PORT:-28080}
SECONDS_LOADED=${SECONDS_LOADED:-10}
OUT=${OUT:-$TARGET/bench}

cargo build --release --quiet --bin feishu-gate --example bench_upstream --example bench_callbacks
gate_bin=${GATEWAY_BIN:-$TARGET/release/feishu-gate}
mkdir -p "$OUT"
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_workspace profile

"$TARGET/release/examples/bench_upstream" "127.0.0.1:$PORT" 2>/dev/null &
pids+=($!)
"$TARGET/release/examples/bench_callbacks" 256 typical >"$work/bodies.txt"
export BODIES=$work/bodies.txt

wrapper=()
case $tool in
  callgrind) wrapper=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out") ;;
  dhat) wrapper=(valgrind --tool=dhat --dhat-out-file="$OUT/dhat.json") ;;
  syscalls) ;;
  *) echo "usage: $0 callgrind|dhat|syscalls" >&2; exit 64 ;;
esac

env FEISHU_GATE_LISTEN=127.0.0.1:$((PORT + 1)) FEISHU_GATE_ADMIN_LISTEN=127.0.0.1:$((PORT + 2)) \
  FEISHU_GATE_UPSTREAM_URL=http://127.0.0.1:$PORT/legacy/approve \
  FEISHU_GATE_TOKEN="$token" FEISHU_GATE_KEY="$key" \
  FEISHU_GATE_RATE_LIMIT_RPS=0 FEISHU_GATE_DEDUP_TTL_SECS=0 \
  "${wrapper[@]}" "$gate_bin" serve >"$work/gateway.log" 2>"$work/tool.log" &
gate=$!
pids+=("$gate")
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$((PORT + 2))/readyz" >/dev/null && break
  sleep 0.1
done
url=http://127.0.0.1:$((PORT + 1))/
warm=$(wrk -t1 -c8 -d2s -s bench/post.lua "$url" | sed -n 's/^RESULT {"requests":\([0-9]*\).*/\1/p')

case $tool in
  callgrind) callgrind_control -i on "$gate" >/dev/null 2>&1 ;;
  syscalls)
    strace -f -c -o "$work/strace.txt" -p "$gate" 2>/dev/null &
    tracer=$!
    sleep 0.5
    ;;
esac
out=$(wrk -t1 -c8 -d"${SECONDS_LOADED}s" -s bench/post.lua "$url")
requests=$(sed -n 's/^RESULT {"requests":\([0-9]*\).*/\1/p' <<<"$out")
case $tool in
  callgrind) callgrind_control -i off "$gate" >/dev/null 2>&1 ;;
  syscalls) kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true ;;
esac
kill "$gate"
wait "$gate" 2>/dev/null || true
pids=("${pids[@]:0:1}")

echo "requests measured: $requests"
case $tool in
  callgrind)
    total=$(sed -n "s/^totals: //p" "$OUT/callgrind.out")
    echo "instructions per request: $((total / requests))"
    callgrind_annotate "$OUT/callgrind.out" 2>/dev/null | sed -n '/^Ir /,$p' | sed -n 3,22p | cut -c1-160
    ;;
  dhat)
    # dhat counts the whole run, warm-up included; start-up is a few
    # hundred allocations, small next to the load's.
    python3 - "$OUT/dhat.json" $((requests + warm)) <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
requests = int(sys.argv[2])
blocks = sum(pp["tbk"] for pp in d["pps"])
size = sum(pp["tb"] for pp in d["pps"])
print(f"allocations per request: {blocks / requests:.1f} ({size / requests:.0f} bytes)")
EOF
    ;;
  syscalls)
    awk -v n="$requests" 'NR > 2 && $4 ~ /^[0-9]+$/ { printf "%-14s %5.2f per request\n", $NF, $4 / n }' \
      "$work/strace.txt" | sort -k2 -nr | head -8
    ;;
esac
