#!/usr/bin/env bash
# The seed's training entry point, mapped onto `python -m top train`:
#
#   bash run_token_prune.sh [--dry-run] [NAME=VALUE ...] [-- EXTRA TOP TRAIN FLAGS]
#
# Settings come from the seed's variables, set in the environment or as NAME=VALUE arguments
# (arguments win). With TASK=SST2 (the default) every unset variable takes the seed's SST-2
# example value. For any other TASK, unset SPARSITY/WARMUP_EPOCHS/BIN_NUM/TOPK/EPOCHS are left
# to `top train`, which takes them from the seed README's per-task table, and DISTILLATION_PATH
# (the fine-tuned dense model: student start and teacher, as in the seed) must be set.
#
# Unknown names are errors (exit 2): a NAME=VALUE argument whose NAME is not listed below, and
# an exported variable that looks like a misspelling of a listed name (see docs/SCRIPTS.md).
# --dry-run prints the command instead of running it. docs/SCRIPTS.md has the full mapping.
set -euo pipefail

SEED_VARIABLES="TASK SPARSITY PRUNE_LOCATION LEARNING_RATE REG_LEARNING_RATE DISTILL_RANK_LOSS_ALPHA
WARMUP_EPOCHS BIN_NUM TOPK EPOCHS EVAL_STEP DISTILLATION_PATH"
OUR_VARIABLES="SPARSITY_EPSILON EX_CATE SUFFIX GLUE_DIR OUTPUT_DIR PYTHON"
ACCEPTED=$(echo $SEED_VARIABLES $OUR_VARIABLES)
# The seed's own script set these but token pruning never read them.
RETIRED="PRUNING_TYPE DISTILL_LAYER_LOSS_ALPHA LAYER_DISTILL_VERSION"

usage="usage: bash run_token_prune.sh [--dry-run] [NAME=VALUE ...] [-- TOP_TRAIN_FLAGS]; NAME one of: $ACCEPTED"

is_accepted() {
    case " $ACCEPTED " in *" $1 "*) return 0 ;; *) return 1 ;; esac
}

# Exported variables within a small edit distance of an accepted name (underscores and case
# ignored): distance <= 1, or <= 2 for names of 8+ letters. TOP_K, SPARSITIY, EVAL_STEPS, EPOCH.
# Also the seed's retired names, which would otherwise look as if they did something.
misspelt_environment() {
    compgen -e | awk -v accepted="$ACCEPTED" -v retired="$RETIRED" '
        function norm(s) { s = toupper(s); gsub(/_/, "", s); return s }
        function lev(a, b,    la, lb, i, j, d, cost, best) {
            la = length(a); lb = length(b)
            for (i = 0; i <= la; i++) d[i, 0] = i
            for (j = 0; j <= lb; j++) d[0, j] = j
            for (i = 1; i <= la; i++)
                for (j = 1; j <= lb; j++) {
                    cost = (substr(a, i, 1) == substr(b, j, 1)) ? 0 : 1
                    best = d[i - 1, j] + 1
                    if (d[i, j - 1] + 1 < best) best = d[i, j - 1] + 1
                    if (d[i - 1, j - 1] + cost < best) best = d[i - 1, j - 1] + cost
                    d[i, j] = best
                }
            return d[la, lb]
        }
        BEGIN { n = split(accepted, names, " "); r = split(retired, old, " ") }
        {
            for (k = 1; k <= n; k++) if ($0 == names[k]) next
            for (k = 1; k <= r; k++) if ($0 == old[k]) { print $0 " (not used by token pruning)"; next }
            for (k = 1; k <= n; k++) {
                a = norm($0); b = norm(names[k])
                limit = (length(b) >= 8) ? 2 : 1
                if (lev(a, b) <= limit) { print $0 " (did you mean " names[k] "?)"; next }
            }
        }'
}

dry_run=0
extra=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        -h|--help) echo "$usage"; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        [A-Za-z_]*=*)
            name=${1%%=*}
            if ! is_accepted "$name"; then
                case " $RETIRED " in *" $name "*)
                    echo "error: $name is not used by token pruning (the seed ignored it too); leave it out." >&2
                    exit 2 ;;
                esac
                echo "error: unknown setting $name; use one of: $ACCEPTED." >&2
                exit 2
            fi
            printf -v "$name" '%s' "${1#*=}"
            ;;
        *) echo "error: unexpected argument '$1'; $usage" >&2; exit 2 ;;
    esac
    shift
done

misspelt=$(misspelt_environment)
if [ -n "$misspelt" ]; then
    echo "error: unknown variable(s) in the environment: $(echo "$misspelt" | paste -sd ';' - | sed 's/;/; /g'); unset or rename them." >&2
    exit 2
fi

TASK=${TASK:-SST2}
task_key=$(echo "$TASK" | tr 'A-Z' 'a-z' | tr -d '_-')
if [ "$task_key" = sst2 ]; then
    # The seed's example (its run_token_prune.sh). Set to empty (EPOCHS=) a value is left out.
    SPARSITY=${SPARSITY-0.4}
    PRUNE_LOCATION=${PRUNE_LOCATION-2,3,4,5,6,7,8,9,10,11}
    WARMUP_EPOCHS=${WARMUP_EPOCHS-10}
    BIN_NUM=${BIN_NUM-25}
    TOPK=${TOPK-20}
    EPOCHS=${EPOCHS-40}
    DISTILLATION_PATH=${DISTILLATION_PATH:-senfu/bert-base-uncased-finetuned-sst2}
elif [ -z "${DISTILLATION_PATH:-}" ]; then
    echo "error: TASK=$TASK needs DISTILLATION_PATH, the model fine-tuned on $TASK (e.g. from python -m top finetune); set it." >&2
    exit 2
fi
LEARNING_RATE=${LEARNING_RATE:-1e-5}
REG_LEARNING_RATE=${REG_LEARNING_RATE:-0.02}
DISTILL_RANK_LOSS_ALPHA=${DISTILL_RANK_LOSS_ALPHA:-0.01}
EVAL_STEP=${EVAL_STEP:-100}
SPARSITY_EPSILON=${SPARSITY_EPSILON:-0.01}
EX_CATE=${EX_CATE:-run_fix}
SUFFIX=${SUFFIX:-s${SPARSITY:-preset}_lr${LEARNING_RATE}_reglr${REG_LEARNING_RATE}_alpha${DISTILL_RANK_LOSS_ALPHA}_warmup${WARMUP_EPOCHS:-preset}_bin${BIN_NUM:-preset}}
OUTPUT_DIR=${OUTPUT_DIR:-out/token_prune/$TASK/$EX_CATE/$SUFFIX}

cmd=("${PYTHON:-python}" -m top train
     --task "$TASK"
     --model "$DISTILLATION_PATH"
     --teacher "$DISTILLATION_PATH"
     --learning-rate "$LEARNING_RATE"
     --reg-learning-rate "$REG_LEARNING_RATE"
     --rank-loss-alpha "$DISTILL_RANK_LOSS_ALPHA"
     --sparsity-epsilon "$SPARSITY_EPSILON"
     --eval-steps "$EVAL_STEP")
# Unset (non-SST-2) values stay out of the command: `top train` uses the task's preset.
[ -n "${SPARSITY:-}" ] && cmd+=(--target-sparsity "$SPARSITY")
[ -n "${PRUNE_LOCATION:-}" ] && cmd+=(--prune-location "$PRUNE_LOCATION")
[ -n "${WARMUP_EPOCHS:-}" ] && cmd+=(--warmup-epochs "$WARMUP_EPOCHS")
[ -n "${BIN_NUM:-}" ] && cmd+=(--bin-num "$BIN_NUM")
[ -n "${TOPK:-}" ] && cmd+=(--topk "$TOPK")
# --max-steps after -- replaces the epoch count.
case " ${extra[*]-} " in *" --max-steps "*) EPOCHS="" ;; esac
[ -n "${EPOCHS:-}" ] && cmd+=(--epochs "$EPOCHS")
[ -n "${GLUE_DIR:-}" ] && cmd+=(--data-dir "$GLUE_DIR")
cmd+=(--output-dir "$OUTPUT_DIR" ${extra[@]+"${extra[@]}"})

export TOKENIZERS_PARALLELISM=false
# `top` importable from a checkout that was not pip-installed.
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
if [ "$dry_run" = 1 ]; then
    printf '%q ' "${cmd[@]}" | sed 's/ $//'
    echo
    exit 0
fi
exec "${cmd[@]}"
