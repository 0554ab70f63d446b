#!/usr/bin/env bash
# Side-by-side benchmark of ficus against nginx and haproxy on this machine.
# Scenario 7 (shadowing) compares ficus shadow against nginx mirror, off / fast / slow (200 ms) target.
# Needs: wrk (required), nginx-light and haproxy (each skipped, with a note, when missing):
#   apt-get install wrk nginx-light haproxy
# Usage: bench/run.sh [--smoke] [--scenarios 1,2,3,4,5,6,7] [--seconds N] [--repeats N] [--threads N]
set -euo pipefail
exec python3 "$(dirname "$0")/run.py" "$@"
