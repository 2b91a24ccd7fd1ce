# Sourced by the bench scripts: a scratch directory and the background processes they
# start, both cleaned up however the script ends.

# bench_workspace NAME: sets $work to a fresh directory and registers the cleanup; start
# background processes with `... & pids+=($!)`.
bench_workspace() {
  work=$(mktemp -d "/tmp/feishu-gate-$1.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}

# The token and key the load tools seal their callbacks with (bench/common/mod.rs).
token=$(sed -n 's/^pub const TOKEN: &str = "\(.*\)";/\1/p' bench/common/mod.rs)
key=$(sed -n 's/^pub const KEY: &str = "\(.*\)";/\1/p' bench/common/mod.rs)
