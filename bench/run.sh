#!/usr/bin/env bash
# Load benchmark: feishu-gate against nginx's plain proxy_pass, both in front
# of the same fast upstream, on loopback only, over plain HTTP and over TLS.
#
#   bench/run.sh                      # everything, about 5 minutes after the build
#   DURATION=3 ROUNDS=2 CONNECTIONS="8 32" MODES=plain bench/run.sh
#   GATEWAY_BIN=/path/to/other/feishu-gate bench/run.sh
#   MODES=tls-close CONNECTIONS=16 bench/run.sh   # a new TLS connection per callback
#
# Modes: plain and tls keep connections alive; tls-close makes a new TLS connection
# (a full handshake) for every callback, so its CPU per request is CPU per connection.
#
# Writes results.jsonl, table.md and latency.png to $OUT (target/bench by
# default). See docs/performance.md for what is measured and why.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

DURATION=${DURATION:-4}           # seconds of each measured run
ROUNDS=${ROUNDS:-3}               # measured runs per system and load, alternating
WARMUP=${WARMUP:-2}               # seconds of load before a load's first round, not counted
CONNECTIONS=${CONNECTIONS:-"1 8 32 64"}
MODES=${MODES:-"plain tls tls-close"}
BODY_KIND=${BODY_KIND:-typical}   # typical (1 KiB sealed), large, plain
PORT=${PORT:-18080}               # first of six consecutive loopback ports
OUT=${OUT:-$root/target/bench}
TARGET=${CARGO_TARGET_DIR:-$root/target}
VENV=${VENV:-$TARGET/bench-venv}

up_port=$PORT
gate_port=$((PORT + 1)) gate_admin=$((PORT + 2))
nginx_port=$((PORT + 3)) nginx_tls_port=$((PORT + 4)) nginx_admin=$((PORT + 5))

need() {
  command -v "$1" >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing $2" >&2
    apt-get install -y -qq "$2" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }
  else
    echo "bench: $1 is missing (Debian package $2)" >&2
    exit 1
  fi
}
need wrk wrk
need nginx nginx-light
need openssl openssl
need python3 python3

echo "== building (release)" >&2
cargo build --release --quiet --bin feishu-gate --example bench_upstream --example bench_callbacks
# GATEWAY_BIN runs another build of the gateway against the same harness
# (a before/after comparison).
gate_bin=${GATEWAY_BIN:-$TARGET/release/feishu-gate}

if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  echo "== installing matplotlib into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet matplotlib
fi

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_workspace bench
chmod 755 "$work"
mkdir -p "$OUT"
results=$OUT/results.jsonl
: >"$results"

# One self-signed ECDSA P-256 certificate for both servers.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
chmod 644 "$work/tls.key"

"$TARGET/release/examples/bench_callbacks" 256 "$BODY_KIND" >"$work/bodies.txt"
export BODIES=$work/bodies.txt

mkdir -p "$work/nginx/tmp"
cat >"$work/nginx/nginx.conf" <<EOF
# The reference hop: nginx's plain proxy_pass, tuned as one would in
# production (keep-alive both ways, bodies kept in memory), one access log
# line per request as the gateway logs one line per callback.
worker_processes auto;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log $work/nginx/access.log;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  client_max_body_size 64k;
  client_body_buffer_size 64k;
  keepalive_requests 1000000;
  upstream legacy {
    server 127.0.0.1:$up_port;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$nginx_port;
    listen 127.0.0.1:$nginx_tls_port ssl;
    ssl_certificate $work/tls.crt;
    ssl_certificate_key $work/tls.key;
    location / {
      proxy_pass http://legacy/legacy/approve;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen 127.0.0.1:$nginx_admin;
    location = /readyz { return 200 "ready\n"; }
  }
}
EOF
# nginx runs unprivileged, as it would in a pod.
nginx_cmd=(nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log")
if [ "$(id -u)" = 0 ]; then
  chown -R nobody "$work/nginx"
  nginx_cmd=(setpriv --reuid=nobody --regid=nogroup --clear-groups "${nginx_cmd[@]}")
fi

# The process and its children (nginx's workers), one pid a line.
family() {
  echo "$1"
  cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | sed '/^$/d'
}
# utime and stime of the whole family, in clock ticks: "user system".
cpu_ticks() {
  local user=0 system=0 pid u s
  for pid in $(family "$1"); do
    read -r u s < <(awk '{print $14, $15}' /proc/"$pid"/stat)
    user=$((user + u)) system=$((system + s))
  done
  echo "$user $system"
}
# Sum of a /proc/<pid>/status field (VmRSS, VmHWM) over the family, in KiB.
mem_kib() {
  local total=0 pid
  for pid in $(family "$1"); do
    total=$((total + $(awk -v f="$2:" '$1 == f {print $2}' /proc/"$pid"/status)))
  done
  echo "$total"
}

start_upstream() {
  "$TARGET/release/examples/bench_upstream" "127.0.0.1:$up_port" 2>>"$work/upstream.log" &
  pids+=($!)
  for _ in $(seq 200); do
    (exec 3<>/dev/tcp/127.0.0.1/$up_port) 2>/dev/null && return
    sleep 0.01
  done
  echo "bench: the upstream did not start" >&2
  exit 1
}

# Whether GET /readyz on this loopback port answers 200. Bash alone, so a
# poll costs well under a millisecond.
is_ready() {
  (exec 3<>/dev/tcp/127.0.0.1/"$1" &&
    printf 'GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3 &&
    read -r status <&3 && [[ $status == "HTTP/1.1 200"* ]]) 2>/dev/null
}

# start <system> <mode>: starts it and records the time from its start until
# /readyz answers 200, and its resident memory once idle; sets $pid.
start() {
  local system=$1 mode=$2 admin t0 t1
  t0=$EPOCHREALTIME
  if [ "$system" = gateway ]; then
    admin=$gate_admin
    local tls_env=()
    [ "$mode" != plain ] && tls_env=(FEISHU_GATE_TLS_CERT="$work/tls.crt" FEISHU_GATE_TLS_KEY="$work/tls.key")
    env FEISHU_GATE_LISTEN=127.0.0.1:$gate_port FEISHU_GATE_ADMIN_LISTEN=127.0.0.1:$gate_admin \
      FEISHU_GATE_UPSTREAM_URL=http://127.0.0.1:$up_port/legacy/approve \
      FEISHU_GATE_TOKEN="$token" FEISHU_GATE_KEY="$key" \
      FEISHU_GATE_RATE_LIMIT_RPS=0 FEISHU_GATE_DEDUP_TTL_SECS=0 "${tls_env[@]}" \
      "$gate_bin" serve >"$work/gateway-$mode.log" 2>&1 &
  else
    admin=$nginx_admin
    "${nginx_cmd[@]}" >"$work/nginx-$mode.log" 2>&1 &
  fi
  pid=$!
  pids+=("$pid")
  until is_ready "$admin"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench: $system ($mode) exited before it was ready:" >&2
      tail -5 "$work/$system-$mode.log" >&2
      exit 1
    fi
    if (( ${EPOCHREALTIME/./} - ${t0/./} > 10000000 )); then
      echo "bench: $system ($mode) not ready within 10 s" >&2
      exit 1
    fi
  done
  t1=$EPOCHREALTIME
  sleep 1
  echo "{\"kind\":\"start\",\"mode\":\"$mode\",\"system\":\"$system\",\"ready_us\":$(( ${t1/./} - ${t0/./} )),\"idle_rss_kib\":$(mem_kib "$pid" VmRSS),\"processes\":$(family "$pid" | wc -l)}" >>"$results"
}

url() {
  case $1/$2 in
    gateway/plain) echo "http://127.0.0.1:$gate_port/" ;;
    gateway/tls*) echo "https://127.0.0.1:$gate_port/" ;;
    nginx/plain) echo "http://127.0.0.1:$nginx_port/" ;;
    nginx/tls*) echo "https://127.0.0.1:$nginx_tls_port/" ;;
  esac
}

# load <system> <mode> <connections> <pid> <round>
load() {
  local system=$1 mode=$2 conns=$3 pid=$4 round=$5 threads=2 user0 sys0 user1 sys1 out result
  [ "$conns" -lt 2 ] && threads=1
  local close=0
  [ "$mode" = tls-close ] && close=1
  export CONNECTION_CLOSE=$close
  if [ "$round" = 1 ]; then
    wrk -t"$threads" -c"$conns" -d"${WARMUP}s" --timeout 5s -s bench/post.lua "$(url "$system" "$mode")" >/dev/null
  fi
  read -r user0 sys0 < <(cpu_ticks "$pid")
  out=$(wrk -t"$threads" -c"$conns" -d"${DURATION}s" --timeout 5s -s bench/post.lua "$(url "$system" "$mode")")
  read -r user1 sys1 < <(cpu_ticks "$pid")
  result=$(sed -n 's/^RESULT //p' <<<"$out")
  echo "{\"kind\":\"load\",\"mode\":\"$mode\",\"system\":\"$system\",\"connections\":$conns,\"round\":$round,\"cpu_user_ticks\":$((user1 - user0)),\"cpu_sys_ticks\":$((sys1 - sys0)),\"clk_tck\":$(getconf CLK_TCK),\"wrk\":$result}" >>"$results"
  echo "   $system $mode c=$conns round $round: $(sed -n 's/^Requests\/sec: *//p' <<<"$out") req/s" >&2
}

{
  echo "{\"kind\":\"machine\",\"cpus\":$(nproc),\"model\":\"$(sed -n 's/^model name\t: //p' /proc/cpuinfo | head -1)\",\"load_before\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"body_bytes\":$(head -1 "$BODIES" | wc -c),\"body_kind\":\"$BODY_KIND\",\"duration_s\":$DURATION,\"rounds\":$ROUNDS,\"date\":\"$(date -u +%FT%TZ)\",\"commit\":\"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\"}"
} >>"$results"

start_upstream
for mode in $MODES; do
  echo "== $mode" >&2
  start gateway "$mode"; gate_pid=$pid
  start nginx "$mode"; nginx_pid=$pid
  # The two systems take turns, the first of each round alternating, so a
  # burst of noise from elsewhere on the machine falls on both alike.
  for conns in $CONNECTIONS; do
    for round in $(seq "$ROUNDS"); do
      if (( round % 2 )); then
        load gateway "$mode" "$conns" "$gate_pid" "$round"
        load nginx "$mode" "$conns" "$nginx_pid" "$round"
      else
        load nginx "$mode" "$conns" "$nginx_pid" "$round"
        load gateway "$mode" "$conns" "$gate_pid" "$round"
      fi
    done
  done
  for system in gateway nginx; do
    p=$gate_pid; [ "$system" = nginx ] && p=$nginx_pid
    echo "{\"kind\":\"peak\",\"mode\":\"$mode\",\"system\":\"$system\",\"peak_rss_kib\":$(mem_kib "$p" VmHWM)}" >>"$results"
  done
  if grep -q '"level":"ERROR"\|"level":"WARN"' "$work/gateway-$mode.log"; then
    echo "bench: the gateway logged warnings; first:" >&2
    grep -m1 '"level":"ERROR"\|"level":"WARN"' "$work/gateway-$mode.log" >&2
  fi
  kill "$gate_pid" "$nginx_pid"
  wait "$gate_pid" "$nginx_pid" 2>/dev/null || true
  sleep 0.5
done
echo "{\"kind\":\"end\",\"load_after\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >>"$results"

"$VENV/bin/python" bench/report.py "$results" "$OUT"
