#!/usr/bin/env bash
# The GPU acceptance checks of the input pipeline, in one command (a CUDA machine, this repository's root):
#
#     bash bench/gpu_acceptance.sh            # about 8 minutes on one H100/H200
#     bash bench/gpu_acceptance.sh --tiny     # a smoke run of the same steps on a CPU (about 2 minutes)
#
# 1. the CUDA tests (copy-ahead order and values, fp16 scaler, peak memory); they skip without CUDA;
# 2. bench/throughput.py: (b)/(a) >= 0.95 for ResNet-50, ViT-B/16 and the UNet, (c)/(a) >= 0.90 for ResNet-50,
#    with a torch.profiler table of (a) and (b) for ResNet-50 under prof/ to name a cause where a target is missed;
# 3. bench/input_pipeline.py: the main thread's microseconds per image with pinning and a real copy.
# Results go to gpu_acceptance/ (JSON and text), for docs/BENCHMARKS.md.
set -u
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${OUT:-gpu_acceptance}
mkdir -p "$OUT"
if [ "${1:-}" = "--tiny" ]; then
    THROUGHPUT=(--tiny) PIPELINE=(--tiny) PROFILE=()
else
    THROUGHPUT=(--models resnet50,vit_b_16,unet --steps 30 --warmup 10) PIPELINE=() PROFILE=(--profile "$OUT/prof")
fi
status=0
"$PY" -m pytest -q tests/test_gpu.py tests/test_input_pipeline.py 2>&1 | tee "$OUT/tests.txt" || status=1
"$PY" bench/throughput.py "${THROUGHPUT[@]}" "${PROFILE[@]}" --output_json "$OUT/throughput.json" 2>&1 \
    | tee "$OUT/throughput.txt" || status=1
"$PY" bench/input_pipeline.py "${PIPELINE[@]}" 2>&1 | tee "$OUT/input_pipeline.txt" || status=1
exit $status
