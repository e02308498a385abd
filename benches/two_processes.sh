#!/usr/bin/env bash
# What the two cores cost each other with nothing shared: the allocator bench's cold replays
# (mimalloc) in one process alone, then in two processes at once, each on its own router and
# its own memory. The ratio of the 1-thread medians (together / alone) is how much a second
# busy core slows the first on this machine, an upper bound on in-process 2-thread scaling
# (2 / ratio) that no sharing inside the engine causes.
#   bash benches/two_processes.sh   (ROUNDS=8 replays per thread count and process)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-8}"
bin=$(cargo bench --bench allocator --no-run 2>&1 | grep -o 'target/release/deps/allocator-[0-9a-f]*' | head -1)
child() { BENCH_ALLOCATOR_CHILD=mimalloc BENCH_CHILD_ROUNDS="$rounds" BENCH_CHILD_SEED="$1" "$bin"; }
alone=$(mktemp); a=$(mktemp); b=$(mktemp)
trap 'rm -f "$alone" "$a" "$b"' EXIT
child 7 >"$alone"
child 8 >"$a" & pid=$!
child 9 >"$b"
wait "$pid"
# Median 1-thread replay (ms) of workload $1 over the files that follow, each process's first
# 1-thread replay of it left out (it faults in fresh pages).
median() {
  local w=$1; shift
  awk -v w="$w" 'FNR == 1 { n = 0 } $1 == w && $2 == 1 { if (n++) print $3 }' "$@" | sort -g |
    awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
printf '| workload | 1 thread alone (ms) | 1 thread, two processes at once (ms) | together / alone |\n|---|---|---|---|\n'
for w in shared-prefix mooncake; do
  one=$(median "$w" "$alone")
  two=$(median "$w" "$a" "$b")
  awk -v w="$w" -v one="$one" -v two="$two" 'BEGIN { printf "| %s | %.2f | %.2f | %.2fx |\n", w, one, two, two / one }'
done
