#!/usr/bin/env bash
# The counters to read on each box of a pktgen run, as deltas over an interval: the
# interfaces' packet and drop counters (/sys/class/net), the driver's own (ethtool -S:
# only the ones that moved), pktgen's results where it runs, and natgw's /metrics where
# natgw runs (packets, drops by reason, sessions).
#
#   counters.sh -i DEV [-i DEV ...] [-u URL] [-w SECONDS] [-n]
#
#   -i DEV      interface to read (repeat for several)
#   -u URL      natgw's metrics endpoint, e.g. http://127.0.0.1:9180/metrics (natgw box)
#   -w SECONDS  interval (default 10)
#   -n          dry run: print what would be read instead (also DRY_RUN=1)
#   -h          this help
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=functions.sh
. "$(dirname "$0")/functions.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

DEVS=() URL='' WAIT=10
while getopts 'i:u:w:nh' opt; do
    case $opt in
        i) DEVS+=("$OPTARG") ;;
        u) URL=$OPTARG ;;
        w) WAIT=$OPTARG ;;
        n) DRY_RUN=1 ;;
        h) usage 0 ;;
        *) usage 2 ;;
    esac
done
[ "${#DEVS[@]}" -gt 0 ] || die "-i DEV: at least one interface"
if ! is_uint "$WAIT" || [ "$WAIT" -lt 1 ]; then
    die "-w $WAIT: a whole number of seconds >= 1"
fi

STATS=(rx_packets tx_packets rx_bytes tx_bytes rx_dropped tx_dropped rx_missed_errors rx_errors tx_errors)

# snapshot FILE: every counter as "name value" lines.
snapshot() {
    local out=$1 d s
    : > "$out"
    for d in "${DEVS[@]}"; do
        for s in "${STATS[@]}"; do
            echo "$d:$s $(cat "/sys/class/net/$d/statistics/$s")" >> "$out"
        done
        ethtool -S "$d" 2> /dev/null | awk -v d="$d" 'NF == 2 && $2 ~ /^[0-9]+$/ { sub(":", "", $1); print d ":ethtool:" $1, $2 }' >> "$out" || true
    done
    if [ -n "$URL" ]; then
        curl -fsS "$URL" | awk '/^natgw_/ && NF == 2 { print "metrics:" $1, $2 }' >> "$out" || echo "metrics: $URL unreachable" >&2
    fi
}

if [ "$DRY_RUN" = 1 ]; then
    for d in "${DEVS[@]}"; do
        for s in "${STATS[@]}"; do
            echo "cat /sys/class/net/$d/statistics/$s"
        done
        echo "ethtool -S $d"
        echo "grep -h -A2 Result: $PG_DIR/$d@* (if pktgen runs here)"
    done
    [ -z "$URL" ] || echo "curl -fsS $URL | grep ^natgw_"
    echo "sleep $WAIT; read everything again; print the deltas and rates"
    exit 0
fi

a=$(mktemp) b=$(mktemp)
trap 'rm -f "$a" "$b"' EXIT
snapshot "$a"
sleep "$WAIT"
snapshot "$b"
echo "# deltas over ${WAIT}s (counters that moved), per second in brackets"
awk -v w="$WAIT" 'NR == FNR { before[$1] = $2; next }
    ($1 in before) && $2 != before[$1] {
        d = $2 - before[$1]; printf "%-60s %15d  (%.0f/s)\n", $1, d, d / w
    }' "$a" "$b"
for d in "${DEVS[@]}"; do
    for f in "$PG_DIR/$d"@*; do
        [ -e "$f" ] || continue
        echo "== pktgen $f"
        grep -A2 'Result:' "$f" || true
    done
done
