#!/usr/bin/env bash
# The seed's evaluation entry point, mapped onto `python -m top eval`:
#
#   bash scripts/run_Evaluation.sh [--dry-run] TASK CHECKPOINT_FOLDER [GPU_ID]
#
# TASK in the seed's spelling (CoLA, SST2, STSB, MNLI, ...) or lower case. Faithful mode with
# the original's evaluation settings: max_seq_length 256, batch 32 (its seed 57 has no counterpart:
# evaluation draws no random numbers). GPU_ID sets
# CUDA_VISIBLE_DEVICES; with no GPU visible the run falls back to the CPU (with a notice).
# Environment: GLUE_DIR (GLUE's layout; else the `datasets` hub copy), OUTPUT_DIR (where
# <task>.json goes; default /tmp/top_eval/TASK/PID as the seed did), PYTHON (default python).
# --dry-run prints the command instead of running it.
set -euo pipefail

usage="usage: bash scripts/run_Evaluation.sh [--dry-run] TASK CHECKPOINT_FOLDER [GPU_ID]"
dry_run=0
positional=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) positional+=("$arg") ;;
    esac
done
if [ "${#positional[@]}" -lt 2 ] || [ "${#positional[@]}" -gt 3 ]; then
    echo "$usage" >&2
    exit 2
fi
task=${positional[0]}
checkpoint=${positional[1]}
gpu_id=${positional[2]:-}
python_bin=${PYTHON:-python}

if [ -n "$gpu_id" ]; then
    export CUDA_VISIBLE_DEVICES=$gpu_id
fi
export TOKENIZERS_PARALLELISM=false
# `top` importable from a checkout that was not pip-installed.
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"

# Ask torch (not nvidia-smi) so the answer matches what `top eval` will see.
if [ "$("$python_bin" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null)" = "1" ]; then
    device=cuda
else
    device=cpu
    echo "notice: no CUDA GPU visible${gpu_id:+ (CUDA_VISIBLE_DEVICES=$gpu_id)}; evaluating on the CPU, which is slow for the large tasks." >&2
fi

cmd=("$python_bin" -m top eval
     --task "$task"
     --checkpoint "$checkpoint"
     --mode faithful
     --max-seq-length 256
     --batch-size 32
     --device "$device"
     --output-dir "${OUTPUT_DIR:-${TMPDIR:-/tmp}/top_eval/$task/$$}")
if [ -n "${GLUE_DIR:-}" ]; then
    cmd+=(--data-dir "$GLUE_DIR")
fi

if [ "$dry_run" = 1 ]; then
    prefix=""
    if [ -n "$gpu_id" ]; then prefix="CUDA_VISIBLE_DEVICES=$(printf '%q' "$gpu_id") "; fi
    echo "$prefix$(printf '%q ' "${cmd[@]}" | sed 's/ $//')"
    exit 0
fi
exec "${cmd[@]}"
