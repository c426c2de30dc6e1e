"""The hostile-trial table for a closing note: every file x payload x command of the corpus in
``test_hostile_files.py``, run in-process on the stack of the interpreter that runs this script.

    python tests/hostile_trials.py > trials.tsv

Prints one tab-separated row per trial: file, payload, command, stack, exit code, the first
error line of stderr (T = the trial's directory; for ``reproduce`` also the task's reason) and
whether the payload ran (its marker file exists).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import test_hostile_files as corpus  # noqa: E402
import torch  # noqa: E402
from builders import (  # noqa: E402
    tiny_checkpoint,
    tiny_model_dir,
    write_cola_dev,
    write_custom_csv,
    write_data,  # noqa: E402
)

from top import cli  # noqa: E402

WEIGHTS = ("pytorch_model.bin", "model.safetensors")


def build_world(root: Path) -> dict:
    tiny_checkpoint(root / "checkpoints" / "tiny-cola", layers=3, keep_bins=5, seed=3)
    write_cola_dev(root / "glue", n=12)
    write_custom_csv(root / "dev.csv", n=12)
    model = tiny_model_dir(root / "model")
    train, dev = write_data(root / "train.csv", 16, seed=1), write_data(root / "tdev.csv", 8, seed=2)
    argv = corpus.train_argv(model, model, train, dev, root / "run", "--max-steps", "3", "--save-steps", "3")
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(argv) == 0
    table = root / "table.toml"
    table.write_text(
        '[cola]\nmetric = "matthews_correlation"\nscore = 0.0\nflops_reduction = 1.0\n'
        'checkpoint = "test/tiny-cola"\nscore_tolerance = 1.0\nflops_tolerance = 1.0\n',
        encoding="utf-8",
    )
    return {"root": root, "checkpoints": root / "checkpoints", "model": model, "train": train, "dev": dev,
            "run": root / "run", "table": table}


def hostile_model(world: dict, tmp: Path, payload: str, marker: Path) -> Path:
    hostile = tmp / "hostile-model"
    shutil.copytree(str(world["model"]), str(hostile))
    for path in list(hostile.iterdir()):
        if path.name in WEIGHTS:
            path.unlink()
    corpus.PAYLOADS[payload](hostile / "pytorch_model.bin", marker)
    return hostile


def trials(world: dict):
    """(file, payload, command, argv builder) for every trial."""
    w = world
    for payload in corpus.PAYLOADS:
        for name in corpus.CHECKPOINT_FILES:
            for command, make in corpus.CHECKPOINT_COMMANDS.items():
                def checkpoint(tmp, marker, name=name, make=make, payload=payload):
                    copy = tmp / "checkpoints" / "tiny-cola"
                    shutil.copytree(str(w["checkpoints"] / "tiny-cola"), str(copy))
                    corpus.place(copy, name, payload, marker)
                    return make(w, tmp, copy)
                yield f"checkpoint/{name}", payload, command, checkpoint
        for flag in ("--model", "--teacher"):
            def fresh(tmp, marker, flag=flag, payload=payload):
                hostile = hostile_model(w, tmp, payload, marker)
                model, teacher = (hostile, w["model"]) if flag == "--model" else (w["model"], hostile)
                return corpus.train_argv(model, teacher, w["train"], w["dev"], tmp / "out", "--max-steps", "2")
            yield f"{flag} pytorch_model.bin", payload, "train", fresh
        for name in ("trainer_state.pt", "pytorch_model.bin", "zs.pt", "l0_module.pt"):
            def resume(tmp, marker, name=name, payload=payload):
                out = tmp / "run"
                shutil.copytree(str(w["run"]), str(out))
                corpus.place(out / "last", name, payload, marker)
                return corpus.train_argv(w["model"], w["model"], w["train"], w["dev"], out, "--max-steps", "6",
                                         "--save-steps", "3", "--resume")
            yield f"last/{name}", payload, "train --resume", resume

        def finetune(tmp, marker, payload=payload):
            hostile = hostile_model(w, tmp, payload, marker)
            return ["finetune", "--model", str(hostile), "--train-file", str(w["train"]), "--validation-file",
                    str(w["dev"]), "--max-steps", "1", "--device", "cpu", "--no-progress",
                    "--output-dir", str(tmp / "ft")]
        yield "--model pytorch_model.bin", payload, "finetune", finetune


def main() -> None:
    torch.set_num_threads(1)
    stack = f"torch {torch.__version__.split('+')[0]}"
    root = Path(tempfile.mkdtemp(prefix="hostile-trials-"))
    try:
        world = build_world(root)
        for number, (file, payload, command, build) in enumerate(trials(world)):
            tmp = root / f"trial-{number}"
            tmp.mkdir()
            marker = tmp / "payload-ran"
            argv = build(tmp, marker)
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = cli.main(argv)
            lines = [line for line in err.getvalue().splitlines() if line.startswith(("error:", "FAILED"))]
            first = lines[0] if lines else ""
            if command == "reproduce":
                reason = json.loads((tmp / "out" / "report.json").read_text())["tasks"][0]["reason"]
                first = f"{first} / reason: {reason}"
            ran = "yes" if marker.exists() else "no"
            print("\t".join([file, payload, command, stack, str(code), first.replace(str(tmp), "T"), ran]), flush=True)
    finally:
        shutil.rmtree(str(root), ignore_errors=True)


if __name__ == "__main__":
    main()
