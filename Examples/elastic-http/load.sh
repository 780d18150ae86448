#!/usr/bin/env bash
# elastic-http under wrk while its CPUs come and go. For each server (`--executor logical --follow`, then the peer
# `--executor global`), one after the other, on the same cores:
#   1. starts a release build of the server in a cgroup of its own with a CPU quota (a cgroup v1 `cpu` hierarchy, else
#      cgroup v2), or, where no cgroup can be written, changes its affinity mask instead (`taskset -a -p`);
#   2. puts every key once, then drives the server with wrk (Scripts/mix.lua: PUT, GET and POST /work) in two phases:
#      "steady" (all CPUs), then "resizing": every 2 s the quota goes from all CPUs to half of them or back (1 <-> 2
#      on 2 cores), so that the number of logical CPUs the server follows really changes; after each change it reads
#      GET /metrics until `hotplug_cpus_online` shows the new count (logical server);
#   3. reads back every key and checks that its counter is 1 + the PUTs wrk saw answered 200.
# It prints one table per server and a verdict line, and exits non-zero on any non-2xx answer, socket error, lost
# write, or a logical server that did not follow a change. Throughput logical/global and p99 resizing/steady are
# goals, reported but never failed.
#
# Usage: ./load.sh [--seconds N] [--short] [options]   (./load.sh --help)
# Needs: root (or a writable cgroup) for the quota, else taskset; wrk (apt-get install wrk), curl.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
    cat << 'EOF'
Usage: ./load.sh [options]
  --seconds N          whole run, both servers (default 300: over 100 resizes; 20...3600)
  --short              --seconds 30 (CI)
  --every S            seconds between resizes (default 2)
  --connections N      wrk connections, one per wrk thread (default 2)
  --resize KIND        auto (default), v1 or v2 (cgroup quota), affinity (taskset -a -p)
  --period US          quota period in microseconds (default 100000, the Kubernetes default)
  --servers LIST       which servers, in order (default "logical global")
  --server-option OPT  one more option for every server (repeatable), e.g. --server-option --cpus=4
  --no-follow          start the logical server without --follow (a server that cannot follow: must fail)
EOF
}

seconds=300; every=2; connections=2; resize_kind=auto; period=100000; servers="logical global"; follow=1
server_options=()
while (( $# > 0 )); do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        --short) seconds=30; shift ;;
        --every) every=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --resize) resize_kind=$2; shift 2 ;;
        --period) period=$2; shift 2 ;;
        --servers) servers=$2; shift 2 ;;
        --server-option) server_options+=("$2"); shift 2 ;;
        --no-follow) follow=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; echo "FAILED: unknown option $1" >&2; exit 2 ;;
    esac
done
fail_usage() { echo "FAILED: $*" >&2; exit 2; }
[[ $seconds =~ ^[0-9]+$ ]] && (( seconds >= 20 && seconds <= 3600 )) || fail_usage "--seconds must be 20...3600, got $seconds"
[[ $every =~ ^[0-9]+$ ]] && (( every >= 1 && every <= 60 )) || fail_usage "--every must be 1...60, got $every"
[[ $connections =~ ^[0-9]+$ ]] && (( connections >= 1 && connections <= 64 )) || fail_usage "--connections must be 1...64, got $connections"
[[ $period =~ ^[0-9]+$ ]] && (( period >= 1000 && period <= 1000000 )) || fail_usage "--period must be 1000...1000000, got $period"
[[ $resize_kind =~ ^(auto|v1|v2|affinity)$ ]] || fail_usage "--resize must be auto, v1, v2 or affinity, got $resize_kind"
for server in $servers; do [[ $server =~ ^(logical|global)$ ]] || fail_usage "--servers takes logical and global, got $server"; done

binary=.build/release/elastic-http
[[ -x $binary ]] || { echo "FAILED: $binary missing: run swift build -c release first"; exit 1; }
command -v wrk > /dev/null || { echo "FAILED: wrk not installed (apt-get install wrk)"; exit 1; }
command -v curl > /dev/null || { echo "FAILED: curl not installed"; exit 1; }

keys=64                                   # as Scripts/mix.lua
count=$(wc -w <<< "$servers")
share=$(( seconds / count ))              # each server's time
steady=$(( share / 4 < 3 ? 3 : share / 4 ))
resizing=$(( share - steady ))

work=$(mktemp -d)
mkdir -p "$work/logical" "$work/global"
cgroup=""                                 # the child cgroup's directory, when one was made
server=""                                 # the running server's pid
resizer=""                                # the running resizer's pid
load=""                                   # the running wrk's pid

cleanup() {
    local status=$?
    [[ -n $load ]] && { kill "$load" 2> /dev/null || true; wait "$load" 2> /dev/null || true; }
    [[ -n $resizer ]] && { kill "$resizer" 2> /dev/null || true; wait "$resizer" 2> /dev/null || true; }
    if [[ -n $server ]]; then
        kill -INT "$server" 2> /dev/null || true
        for _ in $(seq 1 50); do kill -0 "$server" 2> /dev/null || break; sleep 0.1; done
        kill -KILL "$server" 2> /dev/null || true
        wait "$server" 2> /dev/null || true
    fi
    if [[ -n $cgroup && -d $cgroup ]]; then
        # Anything still inside (nothing, normally) goes back to the parent, so that the directory can go.
        while read -r pid; do echo "$pid" > "$(dirname "$cgroup")/cgroup.procs" 2> /dev/null || true; done < "$cgroup/cgroup.procs"
        rmdir "$cgroup" 2> /dev/null || echo "warning: could not remove $cgroup" >&2
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- How the CPUs change: a cgroup quota (v1 or v2) of a child cgroup, else the affinity mask -----------------------

all_cpus=$(taskset -c -p $$ | sed 's/.*: //')          # the CPUs this script may use, e.g. 0-1
ncpus=$(nproc)
low_cpus=$(( ncpus / 2 < 1 ? 1 : ncpus / 2 ))
(( low_cpus < ncpus )) || { echo "FAILED: one CPU only: nothing to resize between"; exit 1; }
# The affinity mask for the low setting: the first low_cpus CPUs of the mask.
low_list=$(python3 -c '
import sys
cpus = []
for part in sys.argv[1].split(","):
    a, _, b = part.partition("-")
    cpus += range(int(a), int(b or a) + 1)
print(",".join(map(str, cpus[:int(sys.argv[2])])))' "$all_cpus" "$low_cpus")

# The mount point of a cgroup hierarchy: fstype cgroup2 (v2), or cgroup with the cpu controller (v1).
mount_of() {
    awk -v want="$1" '{
        for (i = 1; i <= NF; i++) if ($i == "-") break
        fstype = $(i + 1); opts = "," $(i + 3) ","
        if (want == "v2" && fstype == "cgroup2") { print $5; exit }
        if (want == "v1" && fstype == "cgroup" && opts ~ /,cpu,/) { print $5; exit }
    }' /proc/self/mountinfo
}

# Makes the child cgroup for kind v1 or v2; prints its directory, or nothing when it cannot.
make_cgroup() {
    local kind=$1 mount own dir
    mount=$(mount_of "$kind"); [[ -n $mount ]] || return 0
    if [[ $kind == v1 ]]; then
        own=$(awk -F: '$2 ~ /(^|,)cpu(,|$)/ {print $3; exit}' /proc/self/cgroup)
        dir="$mount${own%/}/elastic-http-load-$$"
        mkdir "$dir" 2> /dev/null || return 0
        if echo "$period" > "$dir/cpu.cfs_period_us" 2> /dev/null \
            && echo $(( ncpus * period )) > "$dir/cpu.cfs_quota_us" 2> /dev/null; then echo "$dir"; else rmdir "$dir"; fi
    else
        # Under the hierarchy's root, where the cpu controller can be enabled for children (a non-root cgroup
        # with processes cannot enable it).
        grep -qw cpu "$mount/cgroup.controllers" 2> /dev/null || return 0
        grep -qw cpu "$mount/cgroup.subtree_control" 2> /dev/null || echo +cpu > "$mount/cgroup.subtree_control" 2> /dev/null || return 0
        dir="$mount/elastic-http-load-$$"
        mkdir "$dir" 2> /dev/null || return 0
        if echo "$(( ncpus * period )) $period" > "$dir/cpu.max" 2> /dev/null; then echo "$dir"; else rmdir "$dir"; fi
    fi
}

method=""
for kind in v1 v2; do
    [[ $resize_kind == auto || $resize_kind == "$kind" ]] || continue
    cgroup=$(make_cgroup "$kind")
    [[ -n $cgroup ]] && { method=$kind; break; }
done
if [[ -z $method ]]; then
    [[ $resize_kind == auto || $resize_kind == affinity ]] || { echo "FAILED: cannot write a cgroup $resize_kind CPU quota"; exit 1; }
    command -v taskset > /dev/null || { echo "FAILED: no writable cgroup and no taskset"; exit 1; }
    method=affinity
fi
case $method in
    v1|v2) describe="cgroup $method quota of $cgroup, period $period us: $ncpus <-> $low_cpus CPUs every $every s" ;;
    affinity) describe="affinity mask (taskset -a -p): $all_cpus <-> $low_list every $every s" ;;
esac

# Sets the CPUs the server may use: "high" (all) or "low" (half). Prints nothing; fails loudly.
set_cpus() {
    local cpus=$low_cpus list=$low_list
    [[ $1 == high ]] && { cpus=$ncpus; list=$all_cpus; }
    case $method in
        v1) echo $(( cpus * period )) > "$cgroup/cpu.cfs_quota_us" ;;
        v2) echo "$(( cpus * period )) $period" > "$cgroup/cpu.max" ;;
        affinity) taskset -a -p -c "$list" "$server" > /dev/null ;;
    esac
}

# ---- The server ------------------------------------------------------------------------------------------------------

base=""
metrics() { curl -sf --max-time 5 "$base/metrics"; }
# The sum of the samples of one metric family (with or without labels) whose labels match $2 (a regex), from stdin.
metric_sum() { awk -v name="$1" -v labels="${2:-}" '
    $1 == name || index($1, name "{") == 1 { if (labels == "" || $1 ~ labels) sum += $NF; found = 1 }
    END { if (found) printf "%d\n", sum; else print "" }'; }

start_server() {   # $1: logical or global
    local options=(--port 0 --executor "$1")
    [[ $1 == logical && $follow == 1 ]] && options+=(--follow)
    options+=("${server_options[@]}")
    log="$work/$1.log"
    case $method in
        # The subshell moves itself into the cgroup, then becomes the server: every thread starts inside.
        v1|v2) ( echo "$BASHPID" > "$cgroup/cgroup.procs"; exec "$binary" "${options[@]}" ) > "$log" 2>&1 & ;;
        affinity) "$binary" "${options[@]}" > "$log" 2>&1 & ;;
    esac
    server=$!
    local port=""
    for _ in $(seq 1 100); do   # at most 10 s for the server to listen
        port=$(sed -n 's/.*elastic-http listening on [^ ]*:\([0-9]*\),.*/\1/p' "$log" | head -1)
        [[ -n $port ]] && break
        kill -0 "$server" 2> /dev/null || { cat "$log"; echo "FAILED: server $1 exited"; exit 1; }
        sleep 0.1
    done
    [[ -n $port ]] || { cat "$log"; echo "FAILED: server $1 did not listen within 10 s"; exit 1; }
    base="http://127.0.0.1:$port"
    grep -m1 -o "elastic-http listening.*" "$log"
}

stop_server() {
    kill -INT "$server" 2> /dev/null || true
    local stopped=0
    for _ in $(seq 1 100); do kill -0 "$server" 2> /dev/null || { stopped=1; break; }; sleep 0.1; done
    (( stopped )) || { echo "FAILED: server did not stop within 10 s of SIGINT"; kill -KILL "$server"; }
    wait "$server" 2> /dev/null || true
    server=""
    (( stopped ))
}

# Waits until GET /metrics shows `hotplug_cpus_online` == $1, for at most $2 tenths of a second; prints the time it
# took in ms, or "no <last value>".
wait_online() {
    local want=$1 tenths=$2 start online=""
    start=$(date +%s%N)
    for (( i = 0; i <= tenths * 2; i++ )); do
        online=$(metrics | metric_sum hotplug_cpus_online) || online=""
        if [[ $online == "$want" ]]; then echo $(( ($(date +%s%N) - start) / 1000000 )); return; fi
        sleep 0.05
    done
    echo "no ${online:-?}"
}

# The resizer: from now on, every $every s, low <-> high. For the logical server, a resize counts as followed when
# GET /metrics showed `hotplug_cpus_online` at the old count just before the change and at the new count before the
# next change. One line per resize in $work/resizes: "resize N SETTING CPUS BEFORE MS", MS "no <last value>" when the
# gauge did not follow.
resize_loop() {   # $1: whether to read the gauge (1: logical server following)
    local check=$1 setting=low n=0 next want old before
    next=$(date +%s%N)
    while :; do
        want=$low_cpus; old=$ncpus
        [[ $setting == high ]] && { want=$ncpus; old=$low_cpus; }
        before=-
        (( check )) && { before=$(metrics | metric_sum hotplug_cpus_online) || true; }
        set_cpus "$setting"
        n=$(( n + 1 ))
        if (( check )); then
            echo "resize $n $setting $want ${before:-?} $(wait_online "$want" $(( every * 10 - 4 )))" >> "$work/resizes"
        else
            echo "resize $n $setting $want - -" >> "$work/resizes"
        fi
        if [[ $setting == low ]]; then setting=high; else setting=low; fi
        next=$(( next + every * 1000000000 ))
        local left=$(( next - $(date +%s%N) ))
        (( left > 0 )) && sleep "$(awk -v ns="$left" 'BEGIN { printf "%.3f", ns / 1e9 }')"
    done
}

# ---- One server, both phases ---------------------------------------------------------------------------------------

declare -A rps cpu_us p50 p99 max non2xx socket resizes_written resizes_followed resizes_server follow_ms lost ahead
failures=()

# The server's CPU time so far (user + system, all threads), in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$server/stat"; }
ticks_per_second=$(getconf CLK_TCK)

run_wrk() {   # $1: name, $2: seconds; leaves the output in $work/$1.out and fills the figures
    local name=$1 out="$work/$1.out" ticks
    ticks=$(cpu_ticks)
    # In the background, so that a signal to this script runs its trap at once instead of after wrk.
    wrk -t "$connections" -c "$connections" -d "${2}s" --timeout 10s --latency -s Scripts/mix.lua "$base" > "$out" 2>&1 &
    load=$!
    wait "$load" || { cat "$out"; echo "FAILED: wrk failed ($name)"; exit 1; }
    load=""
    ticks=$(( $(cpu_ticks) - ticks ))
    local line
    line=$(grep '^result ' "$out") || { cat "$out"; echo "FAILED: no result from wrk ($name)"; exit 1; }
    read -r _ _ requests _ duration _ bad _ sockets _ l50 _ l99 _ lmax <<< "$line"
    rps[$name]=$(awk -v r="$requests" -v d="$duration" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
    p50[$name]=$(awk -v v="$l50" 'BEGIN { printf "%.2f", v / 1000 }')
    p99[$name]=$(awk -v v="$l99" 'BEGIN { printf "%.2f", v / 1000 }')
    max[$name]=$(awk -v v="$lmax" 'BEGIN { printf "%.1f", v / 1000 }')
    # CPU time per request: what the server spends on one, whatever else the machine runs meanwhile.
    cpu_us[$name]=$(awk -v t="$ticks" -v hz="$ticks_per_second" -v r="$requests" 'BEGIN { printf "%.0f", (r > 0 ? t * 1e6 / hz / r : 0) }')
    non2xx[$name]=$bad
    socket[$name]=$sockets
}

run_server() {   # $1: logical or global
    local kind=$1 check=0
    [[ $kind == logical ]] && check=1
    echo
    echo "== $kind: steady $steady s, then resizing $resizing s ($describe)"
    set_cpus high 2> /dev/null || true   # (affinity: no server yet; the mask is all CPUs already)
    start_server "$kind"
    [[ $method == affinity ]] && set_cpus high
    for (( k = 0; k < keys; k++ )); do
        curl -sf --max-time 10 -X PUT "$base/kv/k$k" > /dev/null || { echo "FAILED: first PUT of k$k"; exit 1; }
    done

    # Steady.
    local before after
    before=$(metrics | metric_sum hotplug_follower_events_total 'event="(detached|attached)"'); before=${before:-0}
    run_wrk "$kind/steady" "$steady"
    after=$(metrics | metric_sum hotplug_follower_events_total 'event="(detached|attached)"'); after=${after:-0}
    resizes_written[$kind/steady]=0; resizes_followed[$kind/steady]=-; resizes_server[$kind/steady]=$(( after - before ))
    follow_ms[$kind/steady]=-

    # Resizing: the resizer runs beside wrk; afterwards all CPUs again (and, for the logical server, followed).
    rm -f "$work/resizes"; : > "$work/resizes"
    before=$after
    resize_loop "$check" &
    resizer=$!
    run_wrk "$kind/resizing" "$resizing"
    kill "$resizer"; wait "$resizer" 2> /dev/null || true; resizer=""
    set_cpus high
    if (( check )); then
        local back; back=$(wait_online "$ncpus" 50)
        [[ $back =~ ^[0-9]+$ ]] || failures+=("$kind: hotplug_cpus_online did not return to $ncpus after the run ($back)")
    fi
    after=$(metrics | metric_sum hotplug_follower_events_total 'event="(detached|attached)"'); after=${after:-0}
    local name=$kind/resizing written followed
    written=$(grep -c '^resize ' "$work/resizes" || true)
    resizes_written[$name]=$written
    resizes_server[$name]=$(( after - before ))
    if (( check )); then
        # Followed: the gauge was at the old count before (the other setting's) and reached the new one in time.
        local followed_lines="$work/$kind/followed"
        awk -v high="$ncpus" -v low="$low_cpus" '$6 ~ /^[0-9]+$/ && $5 == ($3 == "high" ? low : high)' "$work/resizes" > "$followed_lines"
        followed=$(wc -l < "$followed_lines")
        resizes_followed[$name]=$followed
        follow_ms[$name]=$(awk '{ print $6 }' "$followed_lines" | sort -n | awk '{ v[NR] = $1 } END {
            if (NR == 0) print "-"; else printf "%d/%d\n", v[int((NR + 1) / 2)], v[NR] }')
        awk -v high="$ncpus" -v low="$low_cpus" '!($6 ~ /^[0-9]+$/ && $5 == ($3 == "high" ? low : high)) {
            old = ($3 == "high" ? low : high)
            printf "resize %d to %s (%d CPUs): hotplug_cpus_online was %s before it (%d expected), %s\n", $2, $3, $4, $5, old,
                ($6 ~ /^[0-9]+$/ ? "then " $4 : "still " $7 " at the next resize") }' \
            "$work/resizes" | head -5
        (( written > 0 && followed == written )) \
            || failures+=("$kind: the server followed $followed of $written resizes (hotplug_cpus_online in GET /metrics)")
    else
        resizes_followed[$name]=-; follow_ms[$name]=-
    fi

    # Every key: 1 (the first PUT) + the PUTs answered 200 in both phases. A PUT in flight when wrk stopped may have
    # been applied unanswered: at most one per connection and wrk run, counted apart ("ahead").
    declare -A expected=()
    for (( k = 0; k < keys; k++ )); do expected[k$k]=1; done
    while read -r _ key n; do expected[$key]=$(( ${expected[$key]:-1} + n )); done < <(grep -h '^put ' "$work/$kind/steady.out" "$work/$kind/resizing.out")
    local behind=0 over=0 value shown=0
    for key in "${!expected[@]}"; do
        value=$(curl -sf --max-time 10 "$base/kv/$key") || { failures+=("$kind: GET /kv/$key failed at the end"); behind=$(( behind + 1 )); continue; }
        if (( value < expected[$key] )); then
            behind=$(( behind + expected[$key] - value ))
            (( shown++ < 5 )) && echo "key $key: counter $value < ${expected[$key]} (1 + PUTs answered 200)"
        else
            over=$(( over + value - expected[$key] ))
        fi
    done
    lost[$kind]=$behind; ahead[$kind]=$over
    (( behind == 0 )) || failures+=("$kind: $behind writes lost (counters below the PUTs answered 200)")
    (( over <= 2 * connections )) || failures+=("$kind: counters $over ahead of the PUTs answered, more than one per connection and run")

    for phase in steady resizing; do
        (( non2xx[$kind/$phase] == 0 )) || failures+=("$kind/$phase: ${non2xx[$kind/$phase]} answers not 200")
        (( socket[$kind/$phase] == 0 )) || failures+=("$kind/$phase: ${socket[$kind/$phase]} socket errors")
    done
    stop_server || failures+=("$kind: the server did not stop on SIGINT")

    printf '%-9s %7s %11s %7s %7s %7s %7s %11s %8s %8s %8s %13s\n' phase req/s cpu_us/req p50_ms p99_ms max_ms non2xx \
        socket_errs resizes followed cpu_ops follow_ms_p50/max
    for phase in steady resizing; do
        local n=$kind/$phase
        printf '%-9s %7s %11s %7s %7s %7s %7s %11s %8s %8s %8s %13s\n' "$phase" "${rps[$n]}" "${cpu_us[$n]}" "${p50[$n]}" "${p99[$n]}" \
            "${max[$n]}" "${non2xx[$n]}" "${socket[$n]}" "${resizes_written[$n]}" "${resizes_followed[$n]}" \
            "${resizes_server[$n]}" "${follow_ms[$n]}"
    done
    echo "keys: $keys checked, writes lost: ${lost[$kind]}, applied but unanswered when wrk stopped: ${ahead[$kind]}"
}

echo "elastic-http load: $seconds s, servers: $servers, $connections wrk connections, $ncpus CPUs ($all_cpus)"
echo "resizing: $describe"
for kind in $servers; do run_server "$kind"; done

# ---- Verdict ---------------------------------------------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
total_resizes=0; total_non2xx=0; total_socket=0; total_lost=0
for kind in $servers; do
    total_resizes=$(( total_resizes + resizes_written[$kind/resizing] ))
    total_lost=$(( total_lost + lost[$kind] ))
    for phase in steady resizing; do
        total_non2xx=$(( total_non2xx + non2xx[$kind/$phase] )); total_socket=$(( total_socket + socket[$kind/$phase] ))
    done
done
summary="resizes=$total_resizes non2xx=$total_non2xx socket_errors=$total_socket lost_writes=$total_lost"
if [[ -n ${rps[logical/steady]:-} ]]; then
    summary+=" followed=${resizes_followed[logical/resizing]}/${resizes_written[logical/resizing]}"
fi
if [[ -n ${rps[logical/steady]:-} && -n ${rps[global/steady]:-} ]]; then
    summary+=" throughput logical/global steady=$(ratio "${rps[logical/steady]}" "${rps[global/steady]}")"
    summary+=" resizing=$(ratio "${rps[logical/resizing]}" "${rps[global/resizing]}")"
    summary+=" cpu_per_request logical/global steady=$(ratio "${cpu_us[logical/steady]}" "${cpu_us[global/steady]}")"
fi
for kind in $servers; do
    summary+=" p99 resizing/steady $kind=$(ratio "${p99[$kind/resizing]}" "${p99[$kind/steady]}")"
done
echo
if (( ${#failures[@]} > 0 )); then
    printf 'FAILED: %s\n' "${failures[@]}"
    echo "VERDICT: FAIL $summary"
    exit 1
fi
echo "VERDICT: PASS $summary"
