#!/usr/bin/env bash
# The ablation at GPU scale (params/ablation-gpu.yaml), from local files only: no hub, no network.
#   bash benchmarks/ablation-gpu.sh            # from the repository root, in the project's environment
# Resumes where it stopped (the runner reuses finished steps; training resumes from its checkpoints).
# Writes outputs/ablation-gpu/ and benchmarks/results/ablation-gpu/summary.json (+ trajectories, stats).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python}
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU: use params/ablation-cpu.yaml'"
"$PYTHON" -m mumath check --estimate params/ablation-gpu.yaml
"$PYTHON" -m mumath run params/ablation-gpu.yaml
"$PYTHON" -m mumath.ablation outputs/ablation-gpu benchmarks/results/ablation-gpu params/ablation-gpu.yaml
