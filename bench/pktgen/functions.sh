#!/usr/bin/env bash
# Shared helpers of the pktgen scripts (sourced, not run). Every write to /proc/net/pktgen
# goes through pg_write: with DRY_RUN=1 it prints the command instead of running it, so the
# scripts can be checked on a kernel without the pktgen module (CI does).

PG_DIR=${PG_DIR:-/proc/net/pktgen}
DRY_RUN=${DRY_RUN:-0}

die() {
    echo "$(basename "$0"): $*" >&2
    exit 2
}

info() {
    echo "# $*"
}

# pg_write FILE COMMAND: one pktgen command; the kernel answers in FILE's "Result:" line.
pg_write() {
    local file=$1 cmd=$2
    if [ "$DRY_RUN" = 1 ]; then
        echo "echo \"$cmd\" > $PG_DIR/$file"
        return 0
    fi
    printf '%s\n' "$cmd" > "$PG_DIR/$file" || die "writing \"$cmd\" to $PG_DIR/$file failed"
    # Device and thread files report the outcome of the last command.
    if [ "$file" != pgctrl ] && ! grep -q 'Result: OK' "$PG_DIR/$file"; then
        die "$PG_DIR/$file refused \"$cmd\": $(grep 'Result:' "$PG_DIR/$file")"
    fi
}

# run CMD...: a command with side effects outside /proc/net/pktgen (modprobe, ethtool).
run() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "$*"
        return 0
    fi
    "$@"
}

# ip_to_int A.B.C.D / int_to_ip N: IPv4 address arithmetic for the host ranges.
ip_to_int() {
    local a b c d
    IFS=. read -r a b c d <<< "$1"
    for o in "$a" "$b" "$c" "$d"; do
        case $o in
            '' | *[!0-9]*) die "$1: not an IPv4 address" ;;
        esac
        [ "$o" -le 255 ] || die "$1: not an IPv4 address"
    done
    echo $(((a << 24) | (b << 16) | (c << 8) | d))
}

int_to_ip() {
    local n=$1
    echo "$(((n >> 24) & 255)).$(((n >> 16) & 255)).$(((n >> 8) & 255)).$((n & 255))"
}

is_uint() {
    case $1 in
        '' | *[!0-9]*) return 1 ;;
    esac
    return 0
}
