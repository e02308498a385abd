#!/usr/bin/env bash
# The proxy's overhead: latency at p50 and p99 with 1, 16 and 64 connections, through the
# proxy (examples/proxy) and directly against one stand-in worker, measured with wrk (Debian's
# `wrk` package); and the share of the added latency spent routing (the proxy's span timer in
# /metrics). Everything runs on loopback and stops by itself.
#   bash benches/proxy_overhead.sh   (DURATION=5 seconds per run)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 2; }
duration="${DURATION:-5}"
cargo build --release --example proxy -q
bin=target/release/examples/proxy
$bin --mock 127.0.0.1:30100 >/dev/null & m1=$!
$bin --mock 127.0.0.1:30101 >/dev/null & m2=$!
$bin --listen 127.0.0.1:30180 --worker http://127.0.0.1:30100 --worker http://127.0.0.1:30101 >/dev/null & px=$!
trap 'kill $m1 $m2 $px 2>/dev/null' EXIT
sleep 1
lua=$(mktemp --suffix=.lua)
cat >"$lua" <<'LUA'
-- A 4 KB system prompt shared by 16 groups, then a question: routing sees real prefixes.
local system = string.rep("You are a careful assistant; answer briefly. ", 90)
local n = 0
request = function()
  n = n + 1
  local body = '{"model":"m","max_tokens":8,"prompt":"' .. (n % 16) .. system .. ' question ' .. n .. '"}'
  return wrk.format("POST", "/v1/completions", {["Content-Type"] = "application/json"}, body)
end
LUA
measure() { # url connections -> "p50_us p99_us"
  wrk -t"$(( $2 < 2 ? 1 : 2 ))" -c"$2" -d"${duration}s" --latency -s "$lua" "$1/v1/completions" |
    awk '/^ +50%/{p50=$2} /^ +99%/{p99=$2} END{print p50, p99}' |
    awk '{for(i=1;i<=2;i++){v=$i; u=1; if(v~/us$/){u=1} else if(v~/ms$/){u=1000} else if(v~/s$/){u=1000000}; gsub(/[a-z]+$/,"",v); printf "%.1f ", v*u}; print ""}'
}
echo "| connections | direct p50 (us) | proxy p50 (us) | added p50 (us) | direct p99 (us) | proxy p99 (us) | added p99 (us) |"
echo "|---|---|---|---|---|---|---|"
for c in 1 16 64; do
  read -r dp50 dp99 <<<"$(measure http://127.0.0.1:30100 "$c")"
  read -r pp50 pp99 <<<"$(measure http://127.0.0.1:30180 "$c")"
  awk -v c="$c" -v a="$dp50" -v b="$pp50" -v d="$dp99" -v e="$pp99" \
    'BEGIN{printf "| %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n", c, a, b, b-a, d, e, e-d}'
done
# /metrics without curl: bash's /dev/tcp.
metrics=$(exec 3<>/dev/tcp/127.0.0.1/30180; printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3; cat <&3)
secs=$(echo "$metrics" | awk '/^router_route_seconds_total/{print $2}')
routes=$(echo "$metrics" | awk '/^router_routes_total/{print $2}')
awk -v s="$secs" -v n="$routes" 'BEGIN{printf "\nrouting: %d decisions, mean %.2f us each (the span timer around CacheAwarePolicy::route)\n", n, s/n*1e6}'
rm -f "$lua"
