#!/usr/bin/env bash
# A task's full ToP recipe, as `docker compose run train-<task>` runs it:
#   1. `top finetune` the dense teacher from $BASE_MODEL (skipped when $TEACHER is set, or when
#      outputs/<task>/teacher/best already exists from an earlier run);
#   2. `top train` from that teacher with the task's preset (top/data/tasks.toml), into outputs/<task>/,
#      resuming from outputs/<task>/last when an earlier run was interrupted (one interrupted before
#      its first last/ is moved aside and started again).
# Usage: train_task.sh TASK [extra `top train` arguments...]
# A shorter or different recipe: $TOP_FINETUNE_ARGS and $TOP_TRAIN_ARGS are split on whitespace and
# appended to the `top finetune` and `top train` command lines (the arguments after TASK come last).
# A resumed run must be given the same `top train` arguments as the run it continues.
set -euo pipefail

if [ "$#" -lt 1 ]; then
    echo "train_task.sh: give the task name, e.g. train_task.sh cola." >&2
    exit 2
fi
task="$1"; shift
read -r -a finetune_args <<< "${TOP_FINETUNE_ARGS:-}"
read -r -a train_args <<< "${TOP_TRAIN_ARGS:-}"
output="outputs/$task"
glue_dir="${GLUE_DIR:-/data/glue}"
data=()
# (the repository's data/glue holds a .gitkeep only: that is no data)
if [ -d "$glue_dir" ] && [ -n "$(find "$glue_dir" -mindepth 1 -maxdepth 1 ! -name .gitkeep -print -quit)" ]; then
    data=(--data-dir "$glue_dir")
fi

if [ -n "${TEACHER:-}" ]; then
    if [ ! -d "$TEACHER" ]; then
        echo "TEACHER=$TEACHER is not a directory; point it at a fine-tuned teacher or unset it to fine-tune one." >&2
        exit 2
    fi
    teacher="$TEACHER"
else
    teacher="$output/teacher/best"
    if [ ! -d "$teacher" ]; then
        python -m top finetune --model "${BASE_MODEL:-bert-base-uncased}" --task "$task" "${data[@]}" \
            --output-dir "$output/teacher" "${finetune_args[@]}"
    fi
fi

resume=()
if [ -d "$output/last" ]; then
    resume=(--resume)
elif [ -e "$output/best" ] || [ -L "$output/best" ]; then
    # An earlier run died before its first save of last/, so it cannot be resumed: `top train` moves
    # what it left aside into $output/previous-N/ (nothing is deleted) and starts again.
    resume=(--overwrite-output-dir)
fi
exec python -m top train --model "$teacher" --teacher "$teacher" --task "$task" "${data[@]}" \
    --output-dir "$output" "${resume[@]}" "${train_args[@]}" "$@"
