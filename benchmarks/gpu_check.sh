#!/usr/bin/env bash
# The prepared GPU check of the Triton scan (issue 13), at most ~8 minutes on one H100/H200. Run it on a machine
# with a CUDA GPU from the repository root; everything it prints goes to $OUT (default runs/gpu_check) and its
# figures belong in docs/benchmarks.md with the device name it records.
#
#   benchmarks/gpu_check.sh             # all steps
#   HBM_GBPS=3350 benchmarks/gpu_check.sh   # H100 SXM floor (default: 4800 GB/s, H200)
#
# Steps (each under its own time limit, so one slow step cannot eat the others):
#   1. the CUDA kernel tests (tests/test_scan_triton.py on cuda, the sm_90 compile test)            <= 120 s
#   2. the scan against the bytes-moved floor: L = 197, 1025, 6085, batch 1 and 8, fwd and fwd+bwd,
#      bf16, plus fp32 at batch 8                                                                   <= 150 s
#   3. `vimamba bench` Vim-Ti vs DeiT-Ti (eager "math" and fused "sdpa" attention), 224..2048 px,
#      bf16 and fp32, batch 8: time and peak memory                                                <= 200 s
#   4. a training step of Vim-Ti (bf16, batch 32 at 224 px and batch 2 at 1248 px)                 <= 60 s
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
HBM_GBPS=${HBM_GBPS:-4800}
status=0
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/summary.txt"
  local start=$SECONDS
  timeout --signal=INT "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc after $((SECONDS - start))s; log: $OUT/$name.log" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.log"
  [ $rc -eq 0 ] || status=1
}

{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'device', torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/device.txt"

step tests 120 $PY -m pytest tests/test_scan_triton.py tests/test_triton_compile.py -q -x -p no:cacheprovider \
  -k "not kernels_under_interpreter"
step scan_bf16 110 $PY benchmarks/scan_triton.py --dtype bfloat16 --no-chunked --hbm-gbps "$HBM_GBPS" \
  --shapes 1x197 8x197 1x1025 8x1025 1x6085 8x6085 --warmup 3 --reps 10
step scan_fp32 40 $PY benchmarks/scan_triton.py --dtype float32 --no-chunked --hbm-gbps "$HBM_GBPS" \
  --shapes 8x197 8x6085 --warmup 2 --reps 5
for dtype in bf16 fp32; do
  step "bench_$dtype" 100 $PY -m vimamba.cli bench --models vim_tiny_patch16_224 deit_tiny_patch16_224 \
    --attention sdpa math --device cuda --dtype "$dtype" --mode features --batch-size 8 \
    --resolutions 224 512 1024 1248 2048 --warmup 1 --repeats 5 --time-budget 6 --timeout 60 \
    --output "$OUT/bench-features-$dtype"
done
step train_224 30 $PY -m vimamba.cli bench --models vim_tiny_patch16_224 --device cuda --dtype bf16 --mode train \
  --batch-size 32 --resolutions 224 --warmup 1 --repeats 3 --time-budget 10 --timeout 25 --output "$OUT/train-224"
step train_1248 30 $PY -m vimamba.cli bench --models vim_tiny_patch16_224 --device cuda --dtype bf16 --mode train \
  --batch-size 2 --resolutions 1248 --warmup 1 --repeats 3 --time-budget 10 --timeout 25 --output "$OUT/train-1248"
echo "overall status: $status (0 = every step passed)" | tee -a "$OUT/summary.txt"
exit $status
