#!/usr/bin/env bash
# Linux kernel pktgen as natgw's inside load: UDP from many inside hosts with a few source
# ports each (a carrier's subscribers), one pktgen thread per transmit queue, each thread
# on its own CPU and its own slice of the hosts, so no flow is sent from two queues.
#
#   pktgen_nat.sh -i DEV -d DST_IP -m DST_MAC [options]       (see bench/pktgen/README.md)
#
#   -i DEV      interface towards natgw's inside port
#   -d DST_IP   destination (the sink box, or the generator's own outside-facing port)
#   -D N        destinations from DST_IP on (default 1: one server)
#   -m MAC      destination MAC: natgw's inside interface
#   -s ADDR     first inside host (default 10.0.0.1)
#   -H N        inside hosts (default 65536)
#   -p PORT     first source port (default 1024)
#   -P N        source ports per host (default 16; flows = hosts x ports)
#   -u PORT     destination UDP port (default 9)
#   -z BYTES    frame size on the wire with FCS (default 64)
#   -t N        threads = transmit queues (default 1), from CPU -f (default 0)
#   -f CPU      first CPU
#   -c N        packets per thread (default 0: until interrupted)
#   -r PPS      total rate in packets/s over all threads (default 0: flat out)
#   -b N        burst: packets per xmit_more batch (default 32)
#   -F N -l N   pktgen's concurrent flow table: N flows (<= 65536) of -l packets each;
#               pktgen keeps the destination per flow (with -D > 1), not the source
#   -S          sequential addresses and ports instead of random (see README: pick
#               coprime host and port counts, or the pairs repeat early)
#   -n          dry run: print the /proc/net/pktgen writes instead (also DRY_RUN=1)
#   -h          this help
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=functions.sh
. "$(dirname "$0")/functions.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

DEV='' DST='' NDST=1 DST_MAC='' SRC=10.0.0.1 HOSTS=65536 SPORT=1024 PORTS=16 DPORT=9 SIZE=64
THREADS=1 CPU0=0 COUNT=0 RATE=0 BURST=32 FLOWS='' FLOWLEN='' SEQUENTIAL=0
while getopts 'i:d:D:m:s:H:p:P:u:z:t:f:c:r:b:F:l:Snh' opt; do
    case $opt in
        i) DEV=$OPTARG ;;
        d) DST=$OPTARG ;;
        D) NDST=$OPTARG ;;
        m) DST_MAC=$OPTARG ;;
        s) SRC=$OPTARG ;;
        H) HOSTS=$OPTARG ;;
        p) SPORT=$OPTARG ;;
        P) PORTS=$OPTARG ;;
        u) DPORT=$OPTARG ;;
        z) SIZE=$OPTARG ;;
        t) THREADS=$OPTARG ;;
        f) CPU0=$OPTARG ;;
        c) COUNT=$OPTARG ;;
        r) RATE=$OPTARG ;;
        b) BURST=$OPTARG ;;
        F) FLOWS=$OPTARG ;;
        l) FLOWLEN=$OPTARG ;;
        S) SEQUENTIAL=1 ;;
        n) DRY_RUN=1 ;;
        h) usage 0 ;;
        *) usage 2 ;;
    esac
done

[ -n "$DEV" ] || die "-i DEV: the interface towards natgw is required"
[ -n "$DST" ] || die "-d DST_IP: the destination address is required"
[ -n "$DST_MAC" ] || die "-m MAC: natgw's inside MAC is required (ip neigh / ip link on the natgw box)"
for v in NDST HOSTS SPORT PORTS DPORT SIZE THREADS CPU0 COUNT RATE BURST; do
    is_uint "${!v}" || die "$v=${!v}: a non-negative integer"
done
[ "$THREADS" -ge 1 ] || die "-t $THREADS: at least one thread"
[ "$HOSTS" -ge "$THREADS" ] || die "-H $HOSTS: at least one host per thread (-t $THREADS)"
[ "$PORTS" -ge 1 ] || die "-P $PORTS: at least one port per host"
[ $((SPORT + PORTS - 1)) -le 65535 ] || die "-p $SPORT -P $PORTS: ports beyond 65535"
[ "$SIZE" -ge 64 ] || die "-z $SIZE: at least 64 (the Ethernet minimum)"
dst0=$(ip_to_int "$DST")
[ "$NDST" -ge 1 ] || die "-D $NDST: at least one destination"
[ $((dst0 + NDST - 1)) -le 4294967295 ] || die "-d $DST -D $NDST: beyond 255.255.255.255"
first=$(ip_to_int "$SRC")
[ $((first + HOSTS - 1)) -le 4294967295 ] || die "-s $SRC -H $HOSTS: beyond 255.255.255.255"
if [ -n "$FLOWS" ]; then
    if ! is_uint "$FLOWS" || [ "$FLOWS" -lt 1 ] || [ "$FLOWS" -gt 65536 ]; then
        die "-F $FLOWS: pktgen's flow table holds 1..65536 flows"
    fi
    [ -n "$FLOWLEN" ] || FLOWLEN=1
fi

info "natgw inside load: $HOSTS hosts from $SRC x $PORTS ports = $((HOSTS * PORTS)) flows, $THREADS thread(s), ${SIZE}-byte frames"
run modprobe pktgen
pg_write pgctrl reset

for ((t = 0; t < THREADS; t++)); do
    cpu=$((CPU0 + t))
    dev="$DEV@$t"
    # Thread t's hosts: [first + t*H/T, first + (t+1)*H/T).
    lo=$((first + t * HOSTS / THREADS))
    hi=$((first + (t + 1) * HOSTS / THREADS - 1))
    pg_write "kpktgend_$cpu" rem_device_all
    pg_write "kpktgend_$cpu" "add_device $dev"
    pg_write "$dev" "count $COUNT"
    # A fresh skb per packet: with clone_skb > 0 one skb is sent several times with the same
    # addresses and ports, and the flows collapse.
    pg_write "$dev" "clone_skb 0"
    # pktgen's pkt_size excludes the FCS.
    pg_write "$dev" "pkt_size $((SIZE - 4))"
    pg_write "$dev" "burst $BURST"
    pg_write "$dev" "queue_map_min $t"
    pg_write "$dev" "queue_map_max $t"
    if [ "$NDST" -gt 1 ]; then
        pg_write "$dev" "dst_min $DST"
        pg_write "$dev" "dst_max $(int_to_ip $((dst0 + NDST - 1)))"
    else
        pg_write "$dev" "dst $DST"
    fi
    pg_write "$dev" "dst_mac $DST_MAC"
    pg_write "$dev" "src_min $(int_to_ip "$lo")"
    pg_write "$dev" "src_max $(int_to_ip "$hi")"
    pg_write "$dev" "udp_src_min $SPORT"
    pg_write "$dev" "udp_src_max $((SPORT + PORTS - 1))"
    pg_write "$dev" "udp_dst_min $DPORT"
    pg_write "$dev" "udp_dst_max $DPORT"
    # Correct UDP checksums: natgw updates them incrementally and the sink checks nothing,
    # but a zero checksum is not what real traffic carries.
    pg_write "$dev" "flag UDPCSUM"
    if [ "$SEQUENTIAL" = 0 ]; then
        pg_write "$dev" "flag IPSRC_RND"
        pg_write "$dev" "flag UDPSRC_RND"
        [ "$NDST" -eq 1 ] || pg_write "$dev" "flag IPDST_RND"
    fi
    if [ -n "$FLOWS" ]; then
        pg_write "$dev" "flows $((FLOWS / THREADS > 0 ? FLOWS / THREADS : 1))"
        pg_write "$dev" "flowlen $FLOWLEN"
    fi
    if [ "$RATE" -gt 0 ]; then
        pg_write "$dev" "ratep $(((RATE + THREADS - 1) / THREADS))"
    else
        pg_write "$dev" "delay 0"
    fi
done

if [ "$DRY_RUN" = 1 ]; then
    pg_write pgctrl start
    info "then: grep -h -A2 Result: $PG_DIR/$DEV@*"
    exit 0
fi

stop() { printf 'stop\n' > "$PG_DIR/pgctrl" || true; }
trap stop INT TERM
info "running (Ctrl-C stops); counters: bench/pktgen/counters.sh -i $DEV"
# Blocks until every thread sent its count, or until interrupted.
printf 'start\n' > "$PG_DIR/pgctrl" || true
trap - INT TERM
for ((t = 0; t < THREADS; t++)); do
    echo "== $DEV@$t"
    grep -A2 'Result:' "$PG_DIR/$DEV@$t" || true
done
