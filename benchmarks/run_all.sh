#!/usr/bin/env bash
# Every benchmark behind README's tables, one after another (never in parallel:
# the timings are side by side on the same 2 cores). Takes about an hour.
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results
python benchmarks/bench_marglik.py --n-subnet 2000 5000 20000 --cap 600 --out $R/marglik
python benchmarks/bench_vs_laplace.py --widths 300 980 2220 --n-subnet 1000 --cap 180 --out $R/mlp_D_sweep
python benchmarks/bench_vs_laplace.py --widths 980 --likelihoods regression --cap 180 --out $R/mlp_regression
python benchmarks/bench_vs_laplace.py --widths 980 --n-subnet 5000 20000 --impls ours --out $R/mlp_S_sweep --cap 900
python benchmarks/bench_vs_laplace.py --model cnn --widths 8 96 --n-subnet 10000 --n-train 200 --n-test 200 --cap 600 --out $R/cnn
