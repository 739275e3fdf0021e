#!/usr/bin/env bash
# The Vim paper's Figure 1 comparison (Vim-Ti vs DeiT-Ti, speed and memory against resolution), re-run by
# `vimamba bench`. Results go to runs/bench/<setting>/ (bench.json, bench.csv, bench.png); docs/benchmarks.md
# quotes them with this command and the machine.
#
#   benchmarks/vim_vs_deit.sh cpu    # this machine's CPU (~15 min on 2 busy cores with the native CPU scan)
#   benchmarks/vim_vs_deit.sh cuda   # a CUDA GPU: fp32 (the paper's setting) and bf16, features and training
set -euo pipefail
cd "$(dirname "$0")/.."
VIMAMBA=${VIMAMBA:-"python -m vimamba.cli"}
MODELS=(--models vim_tiny_patch16_224 deit_tiny_patch16_224 --attention sdpa math)

case "${1:-cpu}" in
  cpu)
    # One image at a time, one thread per configuration: the ratios are then the least sensitive to other load.
    $VIMAMBA bench "${MODELS[@]}" --device cpu --threads 1 --batch-size 1 --dtype fp32 --mode features \
      --resolutions 224 512 738 1024 1248 --warmup 1 --repeats 3 --time-budget 30 --timeout 900 \
      --check-scaling --output runs/bench/cpu-features-fp32
    ;;
  cuda)
    RES=(--resolutions 224 512 640 738 1024 1248 1536 2048)
    for dtype in fp32 bf16; do
      # The paper's setting: feature extraction in batches (the authors' benchmark scripts use batch 64).
      $VIMAMBA bench "${MODELS[@]}" --device cuda --dtype "$dtype" --mode features --batch-size 64 "${RES[@]}" \
        --check-scaling --timeout 600 --output "runs/bench/cuda-features-$dtype"
      # Training cost (forward + backward), batch 16.
      $VIMAMBA bench "${MODELS[@]}" --device cuda --dtype "$dtype" --mode train --batch-size 16 "${RES[@]}" \
        --check-scaling --timeout 600 --output "runs/bench/cuda-train-$dtype"
    done
    ;;
  *)
    echo "usage: $0 cpu|cuda" >&2
    exit 2
    ;;
esac
