#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: the same on every run, where
# wall-clock numbers on a shared 2-core machine move by 10-20% from run to run.
#
#   bench/callgrind.sh                    # ficus, scenario 1's 10-route table
#   bench/callgrind.sh --proxy nginx      # nginx as a plain reverse proxy, the same way
#   bench/callgrind.sh --seconds 10 --no-build --out /tmp/ficus.callgrind
#   bench/callgrind.sh --cache            # also simulated cache misses per request
#
# The proxy runs under valgrind with instrumentation off; after a warm-up, counting is
# switched on for one wrk run (-t1 -c32) and off again, and the count is divided by the
# requests wrk completed. Under load a wake-up serves several requests, as in scenario 1.
# Open the profile with `callgrind_annotate FILE`. The table and nginx's configuration
# are scenario 1's, written by bench/run.py, on its ports (127.0.0.1:18080 backend,
# :18084 proxy, :18094 ficus's admin): do not run both at once. It stops only what it
# started. --cache simulates 32 KiB first-level caches and a 512 KiB last level (this
# machine's L1 and L2 per core), as a measure of how much code and data a request
# touches; it leaves out the kernel and the other processes that share the caches.
set -euo pipefail

proxy=ficus
seconds=5
build=1
out=""
cache=()
while [ $# -gt 0 ]; do
    case "$1" in
        --proxy) proxy="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --out) out="$2"; shift 2 ;;
        --cache) cache=(--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=524288,8,64); shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$proxy" in ficus|nginx) ;; *) echo "--proxy is ficus or nginx" >&2; exit 2 ;; esac
case "$seconds" in ''|*[!0-9]*) echo "--seconds takes a whole number" >&2; exit 2 ;; esac
for tool in valgrind callgrind_control wrk python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install valgrind wrk python3" >&2; exit 1; }
done
if [ "$proxy" = nginx ] && ! command -v nginx >/dev/null; then
    echo "needs nginx: apt-get install nginx-light" >&2
    exit 1
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
if [ "$build" = 1 ]; then
    (cd "$root" && cargo build --release --locked --bin ficus --example bench_backend)
fi
work="$(mktemp -d)"
out="${out:-$work/$proxy.callgrind}"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Waits up to 30 s (valgrind starts slowly) for a listener on 127.0.0.1:$1.
wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

"$root/target/release/examples/bench_backend" 127.0.0.1:18080 >/dev/null 2>&1 &
pids+=($!)
wait_port 18080

# Scenario 1's table, or nginx's configuration, as bench/run.py writes them.
config=$(python3 - "$root/bench" "$work" "$proxy" <<'PY'
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import run

work, proxy = Path(sys.argv[2]), sys.argv[3]
if proxy == "ficus":
    print(run.ficus_table(work, run.PORTS["ficus"], "plain", 10))
else:
    print(run.nginx_conf(work, run.PORTS["ficus"], "plain"))
PY
)
if [ "$proxy" = ficus ]; then
    command=("$root/target/release/ficus" --threads 1 serve --config "$config")
else
    command=(nginx -c "$config" -p "$work")
fi

RUST_LOG=warn valgrind --tool=callgrind "${cache[@]}" --instr-atstart=no --callgrind-out-file="$out" \
    "${command[@]}" >"$work/valgrind.log" 2>&1 &
vg=$!
pids+=("$vg")
wait_port 18084

target=http://127.0.0.1:18084/api/orders/7
wrk -t1 -c32 -d2s -H "Host: bench" "$target" >/dev/null
callgrind_control -i on "$vg" >/dev/null 2>&1
requests=$(wrk -t1 -c32 -d"${seconds}s" -H "Host: bench" "$target" | awk '/requests in/ {print $1}')
callgrind_control -i off "$vg" >/dev/null 2>&1
kill -TERM "$vg"
wait "$vg" 2>/dev/null || true

instructions=$(awk '/^totals:/ {print $2; exit}' "$out")
if [ -z "$instructions" ] || [ -z "$requests" ] || [ "$requests" = 0 ]; then
    echo "no count: see $work/valgrind.log" >&2
    cat "$work/valgrind.log" >&2
    exit 1
fi
echo "$proxy: $instructions instructions for $requests requests: $((instructions / requests)) per request"
if [ ${#cache[@]} -gt 0 ]; then
    # totals: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
    awk -v r="$requests" '/^totals:/ {
        printf "per request: %.0f I1 misses, %.0f D1 misses, %.1f last-level misses\n", $5 / r, ($6 + $7) / r, ($8 + $9 + $10) / r
        exit
    }' "$out"
fi
if [ "$out" != "$work/$proxy.callgrind" ]; then
    echo "profile: $out (callgrind_annotate $out)"
fi
