#!/bin/sh
# Run every benchmark in sequence; tables on stdout, JSON in bench/results/.
# Usage: sh bench/run_all.sh [ROUNDS]   (as root: the namespace benchmarks need it)
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROUNDS=${1:-3}
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), kernel $(uname -r), $($PY -V)"
echo "== 1. core throughput"
$PY bench/core_throughput.py --repeat 5 --cpu 1 --compare-with HEAD
echo "== 5. scale"
$PY bench/scale.py --repeat "$ROUNDS" --cpu 1
echo "== 2-4. latency, peak, flood"
$PY bench/netbench.py all --rounds "$ROUNDS"
