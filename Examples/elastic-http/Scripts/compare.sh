#!/usr/bin/env bash
# Compares server configurations under the same wrk mix (Scripts/mix.lua), alternating them round by round so that
# a neighbour's load falls on all of them alike: requests/s, latency p50/p99, and the server's CPU time per request
# (user + system of all its threads over the run, divided by the requests: the figure a busy machine disturbs least).
# Every configuration runs on all CPUs, without resizes (load.sh does those).
# Usage: Scripts/compare.sh [--seconds N (default 8)] [--rounds N (default 5)] "server options" ["server options" ...]
#   e.g. Scripts/compare.sh "--executor global" "--executor logical --follow" \
#            "--executor logical --follow --connection-executor global --follow-interval 1"
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=8; rounds=5
while :; do
    case ${1:-} in
        --seconds) seconds=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) break ;;   # the configurations (their own options start with -- too)
    esac
done
[[ $seconds =~ ^[0-9]+$ && $rounds =~ ^[0-9]+$ ]] && (( seconds >= 1 && rounds >= 1 )) \
    || { echo "--seconds and --rounds take positive integers" >&2; exit 2; }
(( $# > 0 )) || { echo "usage: $0 [--seconds N] [--rounds N] \"server options\" ..." >&2; exit 2; }
binary=.build/release/elastic-http
[[ -x $binary ]] || { echo "FAILED: $binary missing: run swift build -c release first"; exit 1; }
hz=$(getconf CLK_TCK)
work=$(mktemp -d)
server=""
cleanup() { [[ -n $server ]] && { kill -INT "$server" 2> /dev/null; wait "$server" 2> /dev/null; }; rm -rf "$work"; }
trap cleanup EXIT

one() {   # $1: server options; prints "requests/s p50_ms p99_ms cpu_us_per_request"
    local log="$work/log.$RANDOM" port=""
    # shellcheck disable=SC2086
    "$binary" --port 0 $1 > "$log" 2>&1 &
    server=$!
    for _ in $(seq 1 100); do
        port=$(sed -n 's/.*elastic-http listening on [^ ]*:\([0-9]*\),.*/\1/p' "$log" | head -1)
        [[ -n $port ]] && break
        sleep 0.1
    done
    [[ -n $port ]] || { cat "$log"; echo "FAILED: server did not listen"; exit 1; }
    for k in $(seq 0 63); do curl -sf -X PUT "127.0.0.1:$port/kv/k$k" > /dev/null; done
    local t0 t1 result
    t0=$(awk '{ print $14 + $15 }' "/proc/$server/stat")
    result=$(wrk -t 2 -c 2 -d "${seconds}s" --latency -s Scripts/mix.lua "http://127.0.0.1:$port" | grep '^result')
    t1=$(awk '{ print $14 + $15 }' "/proc/$server/stat")
    kill -INT "$server"; wait "$server" 2> /dev/null || true; server=""
    awk -v t=$(( t1 - t0 )) -v hz="$hz" '{ printf "%.0f %.2f %.2f %.0f\n", $3 / ($5 / 1e6), $11 / 1000, $13 / 1000, t * 1e6 / hz / $3 }' <<< "$result"
}

for (( r = 1; r <= rounds; r++ )); do
    for (( c = 1; c <= $#; c++ )); do
        echo "$c $(one "${!c}")" >> "$work/results"
        printf 'round %d  config %d  %s\n' "$r" "$c" "$(tail -1 "$work/results" | cut -d' ' -f2-)"
    done
done
echo
echo "medians over $rounds rounds of $seconds s (config 1 is the reference of the ratios):"
printf '%-8s %8s %8s %8s %8s %11s %10s  %s\n' config req/s ratio p50_ms p99_ms cpu_us/req cpu_ratio options
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ref_rps=""; ref_cpu=""
for (( c = 1; c <= $#; c++ )); do
    rps=$(awk -v c="$c" '$1 == c { print $2 }' "$work/results" | median)
    p50=$(awk -v c="$c" '$1 == c { print $3 }' "$work/results" | median)
    p99=$(awk -v c="$c" '$1 == c { print $4 }' "$work/results" | median)
    cpu=$(awk -v c="$c" '$1 == c { print $5 }' "$work/results" | median)
    [[ -z $ref_rps ]] && { ref_rps=$rps; ref_cpu=$cpu; }
    printf '%-8s %8.0f %7.2fx %8.2f %8.2f %11.0f %9.2fx  %s\n' "$c" "$rps" "$(awk -v a="$rps" -v b="$ref_rps" 'BEGIN { print a / b }')" \
        "$p50" "$p99" "$cpu" "$(awk -v a="$cpu" -v b="$ref_cpu" 'BEGIN { print a / b }')" "${!c}"
done
