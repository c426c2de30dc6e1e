#!/usr/bin/env bash
# The image's entrypoint: dispatches to `python -m top`.
#
#   <top command> ARGS...   eval, reproduce, finetune, train, bench, demo, grid -> python -m top ...
#                           (reproduce also gets --checkpoint-dir $CHECKPOINT_DIR and --data-dir
#                           $GLUE_DIR when those hold anything)
#   train-task TASK         the task's full recipe (docker/train_task.sh): finetune, then train
#   eval-task TASK [ARGS]   top eval on the task's checkpoint: $CHECKPOINT, else the published one
#                           (from $CHECKPOINT_DIR/<repo name>, the HF cache or a download), else
#                           outputs/TASK/best (RTE has no published checkpoint)
#   grid-task TASK [ARGS]   top grid over the paper's grid, pruning the teacher that train-TASK
#                           fine-tuned ($TEACHER, else outputs/TASK/teacher/best), winner promoted;
#                           on the Ray cluster at $RAY_ADDRESS when it is set (--backend ray), in
#                           Ray started here with TOP_GRID_BACKEND=ray, else the local thread pool
#   ray-head [ARGS]         `ray start --head --block` on port $RAY_PORT: this machine heads a cluster
#   ray-worker [ARGS]       `ray start --block --address $RAY_ADDRESS`: this machine joins it
#                           (each Ray start, the grid's too, first passes ray_guard below)
#   test [PYTEST ARGS]      the test suite, on the image's pinned stack
#   anything else           run as a command (bash, python, nvidia-smi, ...)
#
# Before a top command or a task job, the Hugging Face cache and outputs/ must be writable by
# the container's user (compose runs it as ${TOP_UID:-1000}:${TOP_GID:-1000}); when one is not,
# one sentence says how to fix it, and the exit status is 2.
set -euo pipefail

TOP_HOME="${TOP_HOME:-/opt/top}"
GLUE_DIR="${GLUE_DIR:-/data/glue}"
CHECKPOINT_DIR="${CHECKPOINT_DIR:-}"

# True when DIR exists and holds anything besides the .gitkeep that keeps it in git.
has_content() {
    [ -d "$1" ] && [ -n "$(find "$1" -mindepth 1 -maxdepth 1 ! -name .gitkeep -print -quit 2>/dev/null)" ]
}

# --data-dir only when GLUE_DIR holds data; otherwise top reads the `datasets` hub copy.
data_args() {
    if has_content "$GLUE_DIR"; then
        printf '%s\n' --data-dir "$GLUE_DIR"
    fi
}

# Docker creates a bind mount's missing host directory as root, which the container's user
# cannot write; a directory that exists (the repository keeps outputs/ and .hf-cache/) stays its
# owner's, and compose runs the container as that owner when TOP_UID/TOP_GID say who it is.
check_writable() {
    local dir host
    for dir in "${HF_HOME:-${HOME:-/tmp}/.cache/huggingface}" "$PWD/outputs"; do
        mkdir -p "$dir" 2>/dev/null || true
        if [ ! -d "$dir" ] || [ ! -w "$dir" ] || [ ! -x "$dir" ]; then
            case "$dir" in
                "$PWD/outputs") host="./outputs" ;;
                *) host="\${HF_CACHE:-./.hf-cache}" ;;
            esac
            echo "$dir ($host on the host) is not writable by uid $(id -u) in the container; on the host run" \
                "\`export TOP_UID=\$(id -u) TOP_GID=\$(id -g)\` before \`docker compose run\` so the container" \
                "runs as you, or give the directory to uid $(id -u) (\`sudo chown -R $(id -u) $host\`)." >&2
            exit 2
        fi
    done
    # A uid without an account in the image gets HOME=/; give libraries a home they can write.
    if [ ! -w "${HOME:-/}" ]; then
        export HOME="/tmp/top-home-$(id -u)"
        mkdir -p "$HOME"
    fi
}

eval_task() {
    local task="$1"; shift
    local checkpoint="${CHECKPOINT:-}"
    if [ -z "$checkpoint" ]; then
        checkpoint="$(python - "$task" <<'PY'
import os, sys
from top.errors import UserError
from top.storage.hub import resolve_checkpoint
from top.data.published import load_results_table
row = load_results_table().get(sys.argv[1])
repo = getattr(row, "checkpoint", "") if row is not None else ""
if repo:
    try:
        print(resolve_checkpoint(repo, checkpoint_dir=os.environ.get("CHECKPOINT_DIR") or None, task=sys.argv[1]))
    except UserError as error:
        # Not published here nor cached: a checkpoint of train-TASK's, else the one sentence.
        if not os.path.isdir(f"outputs/{sys.argv[1]}/best"):
            sys.exit(f"eval-{sys.argv[1]}: {error}")
PY
)" || exit 2
    fi
    checkpoint="${checkpoint:-outputs/$task/best}"
    if [ ! -d "$checkpoint" ]; then
        echo "eval-$task: no checkpoint at $checkpoint; set CHECKPOINT=DIR or run train-$task first." >&2
        exit 2
    fi
    mapfile -t data < <(data_args)
    exec python -m top eval --task "$task" --checkpoint "$checkpoint" "${data[@]}" \
        --output-dir "outputs/eval-$task" "$@"
}

# The grid's backend: TOP_GRID_BACKEND (local or ray), else ray when RAY_ADDRESS names a cluster.
grid_backend_args() {
    local task="$1" backend="${TOP_GRID_BACKEND:-}"
    if [ -z "$backend" ]; then
        backend=local
        if [ -n "${RAY_ADDRESS:-}" ]; then backend=ray; fi
    fi
    case "$backend" in
        local) ;;
        ray)
            printf '%s\n' --backend ray
            if [ -n "${RAY_ADDRESS:-}" ]; then printf '%s\n' --address "$RAY_ADDRESS"; fi ;;
        *)
            echo "grid-$task: TOP_GRID_BACKEND=$backend is neither local nor ray; unset it or pick one." >&2
            return 2 ;;
    esac
}

# Where Ray listens, and who may use it (measured, tests/test_ray_ports.py): Ray 2.10 and 2.60 both
# listen on every interface of the container's network namespace (the GCS, node manager, object
# manager and workers on the wildcard address, the runtime-env agent on the node's address),
# whatever --node-ip-address says; that flag only names the address a node advertises. On the
# host's network that is every interface of the machine. So before Ray starts here:
#   - Ray with token authentication (2.52 and newer: the current image) starts with RAY_AUTH_MODE=token,
#     the default (compose passes it; an unset one is taken as token), and needs RAY_AUTH_TOKEN
#     where `ray start` runs (a grid's own local Ray makes its token itself);
#   - Ray without it (2.10: exact, ampere) starts only in a namespace whose one interface is the
#     loopback (network_mode: none), or with RAY_AUTH_MODE=disabled, the user's word that every
#     network the machine is on is trusted; otherwise one sentence says how to run it safely;
#   - RAY_AUTH_MODE=disabled on a real network starts, and says once that nothing is authenticated.
# ray_guard WHO NEEDS_TOKEN [ALTERNATIVE]: returns when Ray may start; exits 2 with one sentence if not.

# The installed Ray's version (empty when `ray` cannot say).
ray_version() {
    { ray --version 2>/dev/null || true; } | sed -n 's/^ray, version \([0-9][0-9.]*\).*/\1/p' | head -n 1
}

# True when Ray VERSION has token authentication (RAY_AUTH_MODE=token): 2.52 and newer.
ray_has_token_auth() {
    local major minor rest
    IFS=. read -r major minor rest <<< "$1"
    [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || return 1
    [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 52 ]; }
}

# True when this network namespace has no interface but the loopback (network_mode: none).
only_loopback() {
    local name
    while IFS=: read -r name _; do
        name="${name// /}"
        [ -z "$name" ] || [ "$name" = lo ] || return 1
    done < <(tail -n +3 /proc/net/dev)
}

ray_guard() {
    local who="$1" needs_token="$2" alternative="${3:-}" version mode
    version="$(ray_version)"
    mode="${RAY_AUTH_MODE:-token}"
    export RAY_AUTH_MODE="$mode"
    case "$mode" in
        token|disabled) ;;
        *) echo "$who: RAY_AUTH_MODE=$mode is neither token nor disabled; unset it (token) or pick one." >&2
           exit 2 ;;
    esac
    if ray_has_token_auth "$version"; then
        if [ "$mode" = token ]; then
            if [ "$needs_token" = yes ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
                echo "$who: RAY_AUTH_MODE=token needs RAY_AUTH_TOKEN, the same on every machine of the cluster; run" \
                    "\`export RAY_AUTH_TOKEN=\$(openssl rand -hex 32)\` once and export that value on each machine" \
                    "(or RAY_AUTH_MODE=disabled on a network you trust)." >&2
                exit 2
            fi
            return 0
        fi
    elif [ "$mode" = token ] && ! only_loopback; then
        echo "$who: Ray ${version:-of this image} has no authentication, and here its ports would listen on every" \
            "network interface of this machine, so anyone who reaches one could run code in this container as" \
            "uid $(id -u); use the current image (TOP_IMAGE_TARGET=current: Ray 2.60 with token authentication)," \
            "${alternative:+$alternative, }or set RAY_AUTH_MODE=disabled only if every network this machine is on" \
            "is trusted (private, or firewalled to the cluster's machines)." >&2
        exit 2
    fi
    if [ "$mode" = disabled ] && ! only_loopback; then
        echo "$who: RAY_AUTH_MODE=disabled: no authentication; Ray's ports listen on every network interface" \
            "of this machine." >&2
    fi
}

grid_task() {
    local task="$1"; shift
    local teacher="${TEACHER:-outputs/$task/teacher/best}"
    if [ ! -d "$teacher" ]; then
        echo "grid-$task: no fine-tuned teacher at $teacher; set TEACHER=DIR or run train-$task first." >&2
        exit 2
    fi
    local backend
    backend="$(grid_backend_args "$task")" || exit 2
    mapfile -t backend_args <<< "$backend"
    mapfile -t data < <(data_args)
    local grid=(python -m top grid --task "$task" --model "$teacher" "${data[@]}" ${backend:+"${backend_args[@]}"}
                --output-dir "outputs/grid-$task" --promote "$@")
    if [ -z "$backend" ]; then
        exec "${grid[@]}"
    fi
    if [ -z "${RAY_ADDRESS:-}" ]; then
        # Ray started by the grid itself, on this machine.
        if command -v ray >/dev/null 2>&1; then
            ray_guard "grid-$task" no "or run the grid without Ray (TOP_GRID_BACKEND=local, the default)"
        fi
        exec "${grid[@]}"
    fi
    ray_guard "grid-$task" yes
    # A Ray driver attaches to a node on its own machine, which it finds among its own processes:
    # this container joins the cluster as a node without CPUs or GPUs (the trials run on the
    # others) and runs the grid as its driver; the node ends with the container. The grid is
    # exec'd, as every other job here, so that Ctrl-C reaches it.
    local said
    if ! said="$(ray start --address="$RAY_ADDRESS" --num-cpus=0 --num-gpus=0 --disable-usage-stats \
            ${RAY_NODE_IP:+"--node-ip-address=$RAY_NODE_IP"} 2>&1)"; then
        echo "grid-$task: could not join the Ray cluster at $RAY_ADDRESS ($(printf '%s' "$said" | grep -v '^\s*$' | tail -n 1));" \
            "check RAY_ADDRESS (ray-head's HOST:PORT) and that RAY_AUTH_TOKEN is the head's." >&2
        exit 2
    fi
    exec "${grid[@]}"
}

# ray-head | ray-worker: one node of a Ray cluster in the foreground (`docker compose up -d` keeps it).
ray_node() {
    local role="$1"; shift
    if ! command -v ray >/dev/null 2>&1; then
        echo "$role: this image has no Ray; build the current or exact target of this repository's Dockerfile," \
            "which install it." >&2
        exit 2
    fi
    local where=()
    if [ "$role" = ray-head ]; then
        where=(--head "--port=${RAY_PORT:-6379}" --include-dashboard=false)
    else
        if [ -z "${RAY_ADDRESS:-}" ]; then
            echo "ray-worker: set RAY_ADDRESS to the head's HOST:PORT (ray-head listens on port ${RAY_PORT:-6379})," \
                "e.g. RAY_ADDRESS=10.0.0.1:6379." >&2
            exit 2
        fi
        where=("--address=$RAY_ADDRESS")
    fi
    if [ -n "${RAY_NODE_IP:-}" ]; then where+=("--node-ip-address=$RAY_NODE_IP"); fi
    ray_guard "$role" yes
    exec ray start --block --disable-usage-stats "${where[@]}" "$@"
}

if [ "$#" -eq 0 ]; then
    exec python -m top --help
fi

command="$1"
case "$command" in
    eval|finetune|train|bench|demo|grid|train-task|grid-task|eval-task|reproduce|ray-head|ray-worker)
        check_writable ;;
esac
# Compose passes unset variables as empty ones; Ray reads an empty RAY_ADDRESS as an address.
for name in RAY_ADDRESS RAY_AUTH_TOKEN RAY_NODE_IP; do
    if [ -z "${!name:-}" ]; then unset "$name"; fi
done
case "$command" in
    reproduce)
        shift
        mapfile -t data < <(data_args)
        checkpoints=()
        if [ -n "$CHECKPOINT_DIR" ] && has_content "$CHECKPOINT_DIR"; then
            checkpoints=(--checkpoint-dir "$CHECKPOINT_DIR")
        fi
        exec python -m top reproduce "${checkpoints[@]}" "${data[@]}" "$@" ;;
    eval|finetune|train|bench|demo|grid|--help|-h|--version)
        exec python -m top "$@" ;;
    train-task)
        shift; exec bash "$TOP_HOME/docker/train_task.sh" "$@" ;;
    grid-task)
        shift; [ "$#" -ge 1 ] || { echo "grid-task: give the task name, e.g. grid-task cola." >&2; exit 2; }
        grid_task "$@" ;;
    ray-head|ray-worker)
        shift; ray_node "$command" "$@" ;;
    eval-task)
        shift; [ "$#" -ge 1 ] || { echo "eval-task: give the task name, e.g. eval-task cola." >&2; exit 2; }
        eval_task "$@" ;;
    test)
        shift; cd "$TOP_HOME"; exec python -m pytest -p no:cacheprovider "${@:-tests}" ;;
    *)
        exec "$@" ;;
esac
