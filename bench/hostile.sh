#!/usr/bin/env bash
# Hostile clients: real callbacks at a steady rate while one attack at a time runs against
# the release build, on loopback only, bounded in time (about a minute and a half).
#
#   bench/hostile.sh                                  # every attack
#   PHASE_SECONDS=5 ATTACKERS=100 bench/hostile.sh bad_token_flood
#   GATEWAY_BIN=/path/to/other/feishu-gate bench/hostile.sh   # a before/after comparison
#
# Attacks (bench/hostile.py): none (the baseline), bad_token_flood, many_keys_flood,
# endless_header_lines, keep_alive_holders, slot_holders, one_byte_chunks, admin_hammer,
# admin_flood. Prints one JSON line per phase and writes them to $OUT/hostile.jsonl. The
# gateway runs as the manifests run it: the default limits, one worker per CPU, and their
# 256 MiB memory limit (MEMORY_LIMIT) in a memory cgroup the script makes under
# /sys/fs/cgroup (v1 or v2; it says when it cannot, and runs without), so that an
# out-of-memory kill shows as a failed phase. See docs/reliability.md for the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

PORT=${PORT:-18180}               # first of three consecutive loopback ports
OUT=${OUT:-$root/target/bench}
TARGET=${CARGO_TARGET_DIR:-$root/target}
export PHASE_SECONDS=${PHASE_SECONDS:-8} RATE=${RATE:-20} ATTACKERS=${ATTACKERS:-200}

up_port=$PORT gate_port=$((PORT + 1)) gate_admin=$((PORT + 2))
MEMORY_LIMIT=${MEMORY_LIMIT:-256M}

echo "== building (release)" >&2
cargo build --release --quiet --bin feishu-gate --example bench_upstream --example bench_callbacks
gate_bin=${GATEWAY_BIN:-$TARGET/release/feishu-gate}

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_workspace hostile
mkdir -p "$OUT"
# The attackers open a few hundred sockets; the gateway's own cap stays its default.
ulimit -n 65536 2>/dev/null || true

"$TARGET/release/examples/bench_callbacks" 2048 typical >"$work/bodies.txt"
export BODIES=$work/bodies.txt

"$TARGET/release/examples/bench_upstream" "127.0.0.1:$up_port" 2>>"$work/upstream.log" &
pids+=($!)
env FEISHU_GATE_LISTEN=127.0.0.1:$gate_port FEISHU_GATE_ADMIN_LISTEN=127.0.0.1:$gate_admin \
  FEISHU_GATE_UPSTREAM_URL=http://127.0.0.1:$up_port/legacy/approve \
  FEISHU_GATE_UPSTREAM_OK=/code==0 \
  FEISHU_GATE_TOKEN="$token" FEISHU_GATE_KEY="$key" FEISHU_GATE_DEDUP_TTL_SECS=0 \
  RUST_LOG=error "$gate_bin" serve >"$work/gateway.log" 2>&1 &
gate_pid=$!
pids+=("$gate_pid")

# The manifests' memory limit around the gateway alone.
cgroup=""
for base in /sys/fs/cgroup/memory /sys/fs/cgroup; do
  if [ -w "$base" ] && mkdir -p "$base/feishu-gate-hostile-$$" 2>/dev/null; then
    cgroup=$base/feishu-gate-hostile-$$
    if [ -e "$cgroup/memory.limit_in_bytes" ]; then
      echo "$MEMORY_LIMIT" >"$cgroup/memory.limit_in_bytes"
    elif [ -e "$cgroup/memory.max" ]; then
      echo "$MEMORY_LIMIT" >"$cgroup/memory.max"
    else
      rmdir "$cgroup"; cgroup=""; continue
    fi
    echo "$gate_pid" >"$cgroup/cgroup.procs"
    break
  fi
done
if [ -n "$cgroup" ]; then
  echo "== gateway in memory cgroup $cgroup, limit $MEMORY_LIMIT" >&2
  trap 'bench_cleanup; rmdir "$cgroup" 2>/dev/null || true' EXIT
else
  echo "== no memory cgroup could be made here: running without a memory limit" >&2
fi
for _ in $(seq 100); do
  if curl -fs "http://127.0.0.1:$gate_admin/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
curl -fs "http://127.0.0.1:$gate_admin/readyz" >/dev/null || { cat "$work/gateway.log" >&2; exit 1; }

export GATE_PORT=$gate_port GATE_ADMIN_PORT=$gate_admin GATE_PID=$gate_pid
attacks=${*:-none bad_token_flood many_keys_flood endless_header_lines keep_alive_holders slot_holders one_byte_chunks admin_hammer admin_flood}
: >"$OUT/hostile.jsonl"
for attack in $attacks; do
  python3 bench/hostile.py attack "$attack" &
  attacker=$!
  sleep 1
  python3 bench/hostile.py probe "$attack" | tee -a "$OUT/hostile.jsonl"
  kill "$attacker" 2>/dev/null || true
  wait "$attacker" 2>/dev/null || true
  if ! kill -0 "$gate_pid" 2>/dev/null; then
    echo "== the gateway died during $attack (out of memory?)" >&2
    exit 1
  fi
  # Let the gateway evict what the attack left before the next one.
  sleep 6
done
