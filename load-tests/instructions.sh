#!/usr/bin/env bash
# Instructions per task, counted by callgrind: the hot path's regression guard (issue 14.6).
#
# Runs the in-process producer + worker end to end (`taskstream-load trace-run`, span export
# off) under `valgrind --tool=callgrind` for 5,000 and for 15,000 no-op tasks against a
# private redis-server, and prints (Ir(15,000) - Ir(5,000)) / 10,000: the instructions one
# more task costs, with start-up and shutdown cancelled out. Instruction counts do not
# depend on how busy the machine is (two runs here differed by 0.7%), so compare the figure
# with the one in load-tests/README.md whenever the hot path changes. Redis is a separate
# process and is not counted. Takes about 30 s. Needs valgrind and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/taskstream-load
[ -x "$bin" ] || cargo build --release --bin taskstream-load
command -v valgrind >/dev/null || { echo "valgrind is not installed (Debian: apt-get install valgrind)"; exit 1; }
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
  --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
trap 'kill "$(cat "$dir/redis.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
count() {
  valgrind --tool=callgrind --callgrind-out-file="$dir/cg.$1" \
    "$bin" --redis-url "redis://127.0.0.1:$port" trace-run --tasks "$1" 2>&1 \
    | sed -n 's/.*Collected : //p'
}
small=$(count 5000)
large=$(count 15000)
echo "instructions per task: $(( (large - small) / 10000 ))  (Ir $small at 5,000 tasks, $large at 15,000)"
echo "where they go (15,000-task run, self cost, top 25):"
callgrind_annotate --threshold=90 "$dir/cg.15000" | sed -n '/file:function/,$p' | sed -n '3,27p' \
  | sed -E 's#/root/.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/library/##; s# \[[^]]*\]$##' | cut -c1-160
