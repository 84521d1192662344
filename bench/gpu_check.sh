#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, from the repository root,
#
#     bash bench/gpu_check.sh            # the full check (a few minutes on one GPU)
#     bash bench/gpu_check.sh --smoke    # a tiny rehearsal on the CPU (no GPU needed)
#
# 1. trains the em_3d example network 25 iterations with AMP (fp16/bf16 autocast, gradient
#    clipping), stops, and resumes the same run to 50 iterations;
# 2. predicts a 256^3 synthetic EM volume (40 x 8 x 8 nm) with it on CUDA (fp32, fp16,
#    bf16, one worker per visible GPU) and on the CPU, and reports the maximum differences;
# 3. segments the CUDA prediction;
# 4. prints a table: voxels/s of `predict` next to the raw model forward throughput on the
#    same device (the network alone, on device-resident batches of the model's eval tile
#    and of the larger tile predict plans for the GPU's free memory).
#
# Writes bench/results/gpu_check.json (or $GPU_CHECK_OUT). Exits 2 without a CUDA GPU
# (unless --smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" bench/gpu_check.py "$@"
