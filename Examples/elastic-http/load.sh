#!/usr/bin/env bash
# Drives a release build of elastic-http with wrk on loopback for a few seconds, then checks that every key's counter
# equals the PUTs that got a 200 (a PUT still in flight when wrk stops may have been applied unanswered: at most one
# per connection, reported apart).
# Usage: ./load.sh [seconds (default 5)] [server options, e.g. --executor global --cpus 4]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-5}; shift || true
connections=${CONNECTIONS:-2}
binary=.build/release/elastic-http
[[ -x $binary ]] || { echo "FAILED: $binary missing: run swift build -c release first"; exit 1; }
command -v wrk > /dev/null || { echo "FAILED: wrk not installed (apt-get install wrk)"; exit 1; }
[[ $seconds =~ ^[0-9]+$ && $seconds -ge 1 && $seconds -le 120 ]] || { echo "FAILED: seconds must be 1...120"; exit 1; }

log=$(mktemp); out=$(mktemp)
"$binary" --port 0 "$@" > "$log" 2>&1 &
server=$!
cleanup() { kill -INT "$server" 2> /dev/null || true; rm -f "$log" "$out"; }
trap cleanup EXIT

port=""
for _ in $(seq 1 100); do   # at most 10 s for the server to listen
    port=$(sed -n 's/.*elastic-http listening on [^ ]*:\([0-9]*\),.*/\1/p' "$log" | head -1)
    [[ -n $port ]] && break
    kill -0 "$server" 2> /dev/null || { cat "$log"; echo "FAILED: server exited"; exit 1; }
    sleep 0.1
done
[[ -n $port ]] || { cat "$log"; echo "FAILED: server did not listen within 10 s"; exit 1; }
grep -m1 "listening" "$log"
base="http://127.0.0.1:$port"

# One connection per thread: the Lua script pairs each response with its request (Scripts/mix.lua).
wrk -t "$connections" -c "$connections" -d "${seconds}s" --timeout 10s --latency -s Scripts/mix.lua "$base" > "$out"
grep -E "Requests/sec|Non-2xx|Socket errors|^errors|^latency" "$out" || true

errors=$(sed -n 's/^errors \([0-9]*\)/\1/p' "$out")
exact=0; ahead=0; bad=0
while read -r _ key puts; do
    value=$(curl -sf "$base/kv/$key")
    if (( value == puts )); then exact=$((exact + 1))
    elif (( value > puts )); then ahead=$((ahead + value - puts))
    else bad=$((bad + 1)); echo "key $key: counter $value < $puts PUTs answered"; fi
done < <(grep '^put ' "$out")
echo "keys: $exact exact, $bad behind; PUTs applied but unanswered when wrk stopped: $ahead (at most $connections)"
curl -s "$base/metrics" | grep -E '^hotplug_cpus_online|^elastic_http_requests_total' || true

if (( bad > 0 || ahead > connections || errors > 0 || exact == 0 )); then echo "FAILED"; exit 1; fi
echo "OK"
