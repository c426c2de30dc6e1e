"""``top reproduce`` against results tables written by the tests, on tiny published-layout checkpoints.

The reference numbers come from ``top eval``'s own functions on the same checkpoint and data, so
a table built from them must pass, and one shifted beyond its tolerance must fail.
"""

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from builders import tiny_checkpoint, write_cola_dev, write_sst2_dev

from top.cli import main
from top.errors import UserError
from top.storage import hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPORT_TASK_KEYS = {
    "task", "metric", "checkpoint", "checkpoint_path", "data", "n_examples", "dev_examples", "paper_score",
    "measured_score",
    "delta", "score_tolerance", "paper_flops_reduction", "measured_flops_reduction",
    "measured_flops_reduction_unpadded", "exact_flops_reduction", "flops_tolerance", "compact_score",
    "compact_exact_flops_reduction", "status", "reason",
}


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch):
    """No test here may reach the network: offline, with an empty private HF cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def reference(checkpoint: Path, task: str, glue: Path, metric: str):
    """What the checkpoint really scores in faithful mode (percent) and its FLOPs reduction."""
    import torch

    from top.data.loading import load_task_data
    from top.evaluation.evaluate import load_model, score

    loaded = load_model(checkpoint, torch.device("cpu"))
    dev = load_task_data(task, str(glue), max_seq_length=256, splits=("dev",))
    record = score(loaded, dev, "faithful", 256, 32, progress=False)
    return 100 * record["metrics"][metric], record["flops_reduction"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    checkpoints = root / "checkpoints"
    tiny_checkpoint(checkpoints / "tiny-cola", layers=3, keep_bins=5, seed=3)
    tiny_checkpoint(checkpoints / "tiny-sst2", layers=3, keep_bins=4, seed=4)
    write_cola_dev(root / "glue", n=23)
    write_sst2_dev(root / "glue", n=29)
    truth = {
        "cola": reference(checkpoints / "tiny-cola", "cola", root / "glue", "matthews_correlation"),
        "sst2": reference(checkpoints / "tiny-sst2", "sst2", root / "glue", "accuracy"),
    }
    return root, truth


METRICS = {"cola": "matthews_correlation", "sst2": "accuracy", "rte": "accuracy"}


def write_table(path: Path, rows, dev_examples=None) -> Path:
    """rows: task -> (score, flops_reduction, checkpoint id); dev_examples: task -> the row's dev_examples."""
    text = ""
    for task, (score, flops, checkpoint) in rows.items():
        text += (
            f'[{task}]\nmetric = "{METRICS[task]}"\nscore = {score!r}\nflops_reduction = {flops!r}\n'
            f'checkpoint = "{checkpoint}"\nscore_tolerance = 0.5\nflops_tolerance = 0.05\n'
        )
        if dev_examples and task in dev_examples:
            text += f"dev_examples = {dev_examples[task]}\n"
        text += "\n"
    path.write_text(text, encoding="utf-8")
    return path


def true_rows(truth, **shift):
    """The measured values, optionally moved: shift={"sst2": (score_delta, flops_factor)}."""
    rows = {}
    for task, (score, flops) in truth.items():
        delta, factor = shift.get(task, (0.0, 1.0))
        rows[task] = (round(score + delta, 4), round(flops * factor, 4), f"test/tiny-{task}")
    return rows


def reproduce(root, out, table, *extra):
    return main(["reproduce", "--checkpoint-dir", str(root / "checkpoints"), "--data-dir", str(root / "glue"),
                 "--results-table", str(table), "--device", "cpu", "--output-dir", str(out), "--no-progress",
                 *extra])


def test_matching_table_passes_and_report_holds_everything(setup, tmp_path, capsys):
    root, truth = setup
    table = write_table(tmp_path / "table.toml", true_rows(truth))
    out = tmp_path / "out"
    assert reproduce(root, out, table, "--seed", "11") == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert [t["task"] for t in report["tasks"]] == ["cola", "sst2"]
    for row in report["tasks"]:
        assert set(row) == REPORT_TASK_KEYS
        assert row["status"] == "pass" and row["reason"] is None
        score, flops = truth[row["task"]]
        assert row["measured_score"] == pytest.approx(score, abs=1e-3)
        assert row["delta"] == pytest.approx(row["measured_score"] - row["paper_score"], abs=1e-3)
        assert row["measured_flops_reduction"] == pytest.approx(flops, rel=1e-3)
        # Against the padded task length the reduction is larger than against the real tokens.
        assert 1.0 < row["measured_flops_reduction_unpadded"] < row["measured_flops_reduction"]
        assert row["compact_score"] is not None and row["n_examples"] == {"cola": 23, "sst2": 29}[row["task"]]
        assert row["checkpoint_path"] == str(root / "checkpoints" / f"tiny-{row['task']}")
        for mode in ("faithful", "compact"):
            record = json.loads((out / mode / f"{row['task']}.json").read_text())
            assert record["mode"] == mode and record["max_seq_length"] == 256
    settings = report["settings"]
    assert settings["seed"] == 11 and settings["max_seq_length"] == 256 and settings["batch_size"] == 32
    assert settings["assert"] is True and settings["results_table"] == str(table)
    assert settings["deterministic"]["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert settings["deterministic"]["cudnn_deterministic"] is True
    assert {"python", "torch", "transformers", "numpy", "scipy", "gpu"} <= set(settings["environment"])
    # The stack and the device, named so that a report from the image and one from a laptop differ.
    import platform

    import torch
    import transformers

    stack = report["stack"]
    assert stack["python"] == platform.python_version() and stack["torch"] == torch.__version__
    assert stack["transformers"] == transformers.__version__ and stack["device"].startswith("cpu (")
    # The printed summary is report.md.
    markdown = (out / "report.md").read_text()
    assert markdown.strip() in printed
    assert "| cola | Matthews corr. |" in markdown and "| sst2 | Accuracy |" in markdown
    assert "2 of 2 tasks match the table" in markdown
    assert f"Stack: Python {stack['python']}, torch {stack['torch']}, transformers {stack['transformers']}; " \
           f"device: {stack['device']}." in markdown


@pytest.mark.parametrize(
    "shift, passes",
    [
        ((0.45, 1.0), True),
        ((-0.6, 1.0), False),
        ((0.0, 1.045), True),
        ((0.0, 0.94), False),
    ],
    ids=["score+0.45", "score-0.6", "flops*1.045", "flops*0.94"],
)
def test_tolerances_decide_pass_and_fail(setup, tmp_path, capsys, shift, passes):
    root, truth = setup
    table = write_table(tmp_path / "table.toml", true_rows(truth, sst2=shift))
    code = reproduce(root, tmp_path / "out", table)
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    statuses = {t["task"]: t["status"] for t in report["tasks"]}
    assert statuses["cola"] == "pass"
    if passes:
        assert code == 0 and statuses["sst2"] == "pass" and "FAILED" not in err
    else:
        assert code == 1 and statuses["sst2"] == "fail"
        failed_line = [line for line in err.splitlines() if line.startswith("FAILED")]
        assert failed_line == ["FAILED 1 of 2 tasks: sst2"]
        reason = report["tasks"][1]["reason"]
        assert ("score" in reason) == (shift[0] != 0.0) and ("FLOPs" in reason) == (shift[1] != 1.0)


def test_no_assert_reports_but_does_not_fail(setup, tmp_path):
    root, truth = setup
    table = write_table(tmp_path / "table.toml", true_rows(truth, sst2=(5.0, 1.0)))
    assert reproduce(root, tmp_path / "out", table, "--no-assert") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["assert"] is False
    assert [t["status"] for t in report["tasks"]] == ["pass", "fail"]


def test_tasks_option_selects_and_checks(setup, tmp_path):
    root, truth = setup
    table = write_table(tmp_path / "table.toml", true_rows(truth))
    assert reproduce(root, tmp_path / "out", table, "--tasks", "SST-2") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [t["task"] for t in report["tasks"]] == ["sst2"]
    # A task the table lacks, and one that does not exist: bad input, exit 2 before any evaluation.
    assert reproduce(root, tmp_path / "o2", table, "--tasks", "mrpc") == 2
    assert reproduce(root, tmp_path / "o3", table, "--tasks", "cola,wnli9") == 2
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_missing_checkpoints_fail_unless_no_assert(setup, tmp_path, capsys, no_network):
    root, truth = setup
    rows = true_rows(truth)
    rows["cola"] = (rows["cola"][0], rows["cola"][1], "test/not-there-cola")
    rows["rte"] = (68.3, 7.71, "")
    table = write_table(tmp_path / "table.toml", rows)
    assert reproduce(root, tmp_path / "out", table) == 1
    err = capsys.readouterr().err
    assert "FAILED 1 of 2 tasks: cola" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    by_task = {t["task"]: t for t in report["tasks"]}
    assert by_task["sst2"]["status"] == "pass"
    assert by_task["rte"]["status"] == "not published" and by_task["rte"]["measured_score"] is None
    assert by_task["cola"]["status"] == "missing" and by_task["cola"]["measured_score"] is None
    reason = by_task["cola"]["reason"]
    assert "cola" in reason and "--checkpoint-dir" in reason
    assert reason.count(". ") == 0 and reason.endswith(".")
    assert "not-there-cola" in reason and "HF_HUB_OFFLINE" in reason

    assert reproduce(root, tmp_path / "out2", table, "--no-assert") == 0
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert [t["status"] for t in report["tasks"]] == ["missing", "pass", "not published"]


def test_default_run_skips_an_unpublished_row_and_passes(setup, tmp_path, capsys, no_network):
    root, truth = setup
    rows = true_rows(truth)
    rows["rte"] = (68.3, 7.71, "")
    table = write_table(tmp_path / "table.toml", rows)
    assert reproduce(root, tmp_path / "out", table) == 0
    captured = capsys.readouterr()
    assert "FAILED" not in captured.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [(t["task"], t["status"]) for t in report["tasks"]] == [
        ("cola", "pass"), ("sst2", "pass"), ("rte", "not published")]
    assert report["tasks"][2]["checkpoint_path"] is None and report["tasks"][2]["n_examples"] is None
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| rte | Accuracy | 68.30 | – |" in markdown and "not published" in markdown
    assert "2 of 2 tasks match the table (asserted); not published, so skipped: rte." in markdown
    assert "| rte |" in captured.out and "not published" in captured.out


def test_an_unpublished_task_asked_for_by_name_is_one_sentence(setup, tmp_path, capsys):
    root, truth = setup
    rows = true_rows(truth)
    rows["rte"] = (68.3, 7.71, "")
    table = write_table(tmp_path / "table.toml", rows)
    assert reproduce(root, tmp_path / "out", table, "--tasks", "rte") == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: " + hub.unpublished_message("rte")
    assert err.count(". ") == 0 and err.endswith(".") and "--results-table" in err
    assert not (tmp_path / "out").exists()
    # The packaged table, too: RTE has no published checkpoint.
    assert main(["reproduce", "--tasks", "RTE", "--output-dir", str(tmp_path / "o2")]) == 2
    assert "no checkpoint for rte" in capsys.readouterr().err


def test_dev_set_size_is_checked_by_name(setup, tmp_path, capsys):
    root, truth = setup
    table = write_table(tmp_path / "table.toml", true_rows(truth), dev_examples={"cola": 23, "sst2": 872})
    assert reproduce(root, tmp_path / "out", table) == 1
    err = capsys.readouterr().err
    assert "FAILED 1 of 2 tasks: sst2" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    cola, sst2 = report["tasks"]
    assert cola["status"] == "pass" and cola["dev_examples"] == 23 and cola["n_examples"] == 23
    assert sst2["status"] == "fail" and sst2["n_examples"] == 29 and sst2["dev_examples"] == 872
    assert sst2["reason"] == "sst2 was evaluated on 29 dev examples, not the 872 of the table"
    assert sst2["measured_score"] is not None  # the score is still measured and reported
    assert "sst2 was evaluated on 29 dev examples, not the 872" in err


def test_nothing_evaluated_fails_even_under_no_assert(setup, tmp_path, capsys, no_network):
    root, truth = setup
    rows = {task: (score, flops, f"test/not-there-{task}") for task, (score, flops, _) in true_rows(truth).items()}
    rows["rte"] = (68.3, 7.71, "")
    table = write_table(tmp_path / "table.toml", rows)
    for extra in ((), ("--no-assert",)):
        out = tmp_path / ("out" + "".join(extra))
        assert reproduce(root, out, table, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: No checkpoint of cola, sst2 was found in --checkpoint-dir")
        assert err.count("\n") == 0 and err.endswith("then pass --checkpoint-dir checkpoints.")
        assert "python scripts/download_checkpoints.py --output-dir checkpoints" in err
        # The report is still written, for the record.
        statuses = [t["status"] for t in json.loads((out / "report.json").read_text())["tasks"]]
        assert statuses == ["missing", "missing", "not published"]


def test_offline_with_nothing_cached_says_what_to_download(tmp_path, capsys, no_network):
    """The packaged table, HF_HUB_OFFLINE=1, an empty cache and no --checkpoint-dir: exit 2, one sentence."""
    code = main(["reproduce", "--device", "cpu", "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.count(". ") == 0 and err.endswith(".")
    assert "HF_HUB_OFFLINE is set" in err and str(tmp_path / "hf_home" / "hub") in err
    assert "`python scripts/download_checkpoints.py --output-dir checkpoints`" in err
    assert "--checkpoint-dir checkpoints" in err
    assert "cola, qqp, mrpc, sst2, mnli, qnli, stsb" in err and "rte" not in err.split("found")[0]


def test_a_report_in_which_nothing_was_evaluated_fails(tmp_path, capsys):
    from top.evaluation.report import exit_code, failure_text

    report = {"settings": {"assert": False}, "tasks": [
        {"task": "cola", "status": "missing", "reason": "x."}, {"task": "rte", "status": "not published"}]}
    assert exit_code(report) == 1
    assert "none of 1 tasks was evaluated" in failure_text(report)
    report["tasks"][0]["status"] = "fail"
    assert exit_code(report) == 0  # evaluated; under --no-assert a mismatch does not fail
    report["settings"]["assert"] = True
    assert exit_code(report) == 1


def test_missing_checkpoint_message_is_one_sentence_naming_task_and_both_ways():
    message = hub.missing_message("senfu/bert-base-uncased-top-pruned-mrpc", "mrpc")
    assert message.endswith(".") and message.count(". ") == 0 and "\n" not in message
    assert "mrpc" in message
    assert "DIR/bert-base-uncased-top-pruned-mrpc" in message and "--checkpoint-dir DIR" in message
    assert "HF_HUB_OFFLINE" in message and "Hugging Face cache" in message


def test_missing_checkpoint_message_says_unset_hf_hub_offline_only_when_it_is_set(monkeypatch):
    repo = "senfu/bert-base-uncased-top-pruned-mrpc"
    assert "unset HF_HUB_OFFLINE" in hub.missing_message(repo, "mrpc")  # the autouse fixture sets it
    monkeypatch.delenv("HF_HUB_OFFLINE")
    online = hub.missing_message(repo, "mrpc")
    assert "HF_HUB_OFFLINE" not in online and "network access" in online and "--checkpoint-dir DIR" in online


def test_offline_without_copy_is_a_clear_error_without_network(tmp_path, no_network):
    with pytest.raises(UserError) as info:
        hub.resolve_checkpoint("senfu/bert-base-uncased-top-pruned-cola", tmp_path / "empty", task="cola")
    assert str(info.value) == hub.missing_message("senfu/bert-base-uncased-top-pruned-cola", "cola")
    with pytest.raises(UserError):
        hub.resolve_checkpoint("senfu/bert-base-uncased-top-pruned-cola", None, task="cola")


def fake_hub_cache(hf_home: Path, repo_id: str, source: Path) -> Path:
    """The hub cache's layout: blobs, a snapshot of symlinks to them, and refs/main."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(source.iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copyfile(str(file), str(blob))
        os.symlink(os.path.relpath(str(blob), str(snapshot)), str(snapshot / file.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_offline_uses_a_cached_hub_copy(setup, tmp_path, no_network):
    root, truth = setup
    snapshot = fake_hub_cache(tmp_path / "hf_home", "test/tiny-sst2", root / "checkpoints" / "tiny-sst2")
    assert hub.resolve_checkpoint("test/tiny-sst2", None, task="sst2") == snapshot
    # A --checkpoint-dir without the checkpoint falls back on the cache too.
    assert hub.resolve_checkpoint("test/tiny-sst2", tmp_path, task="sst2") == snapshot

    table = write_table(tmp_path / "table.toml", {"sst2": true_rows(truth)["sst2"]})
    code = main(["reproduce", "--data-dir", str(root / "glue"), "--results-table", str(table), "--device", "cpu",
                 "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["tasks"][0]["checkpoint_path"] == str(snapshot) and report["tasks"][0]["status"] == "pass"


def test_download_checkpoint_offline_copies_the_cached_files(setup, tmp_path, no_network):
    root, _ = setup
    source = root / "checkpoints" / "tiny-cola"
    fake_hub_cache(tmp_path / "hf_home", "test/tiny-cola", source)
    target = hub.download_checkpoint("test/tiny-cola", tmp_path / "ckpts")
    assert target == tmp_path / "ckpts" / "tiny-cola"
    names = sorted(p.name for p in source.iterdir())
    assert sorted(p.name for p in target.iterdir()) == names
    for name in names:
        assert not (target / name).is_symlink()
        assert (target / name).read_bytes() == (source / name).read_bytes()
    with pytest.raises(UserError) as info:
        hub.download_checkpoint("test/absent", tmp_path / "ckpts")
    assert "HF_HUB_OFFLINE" in str(info.value) and "test/absent" in str(info.value)


def test_hub_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    assert hub.hub_cache_dir() == tmp_path / "hf_home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub.hub_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert hub.is_offline()


def test_corrupt_weights_are_reported_and_other_tasks_still_run(setup, tmp_path, capsys):
    root, truth = setup
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(str(root / "checkpoints"), str(checkpoints))
    (checkpoints / "tiny-cola" / "model.safetensors").write_bytes(b"this is not a weights file")
    table = write_table(tmp_path / "table.toml", true_rows(truth))
    code = main(["reproduce", "--checkpoint-dir", str(checkpoints), "--data-dir", str(root / "glue"),
                 "--results-table", str(table), "--device", "cpu", "--output-dir", str(tmp_path / "out"),
                 "--no-progress"])
    assert code == 1
    assert "FAILED 1 of 2 tasks: cola" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    cola, sst2 = report["tasks"]
    assert cola["status"] == "error" and "corrupt" in cola["reason"]
    assert str(checkpoints / "tiny-cola" / "model.safetensors") in cola["reason"]
    assert sst2["status"] == "pass"
    # Even --no-assert fails when a checkpoint could not be evaluated at all.
    assert main(["reproduce", "--checkpoint-dir", str(checkpoints), "--data-dir", str(root / "glue"),
                 "--results-table", str(table), "--device", "cpu", "--output-dir", str(tmp_path / "out2"),
                 "--no-progress", "--tasks", "cola", "--no-assert"]) == 1


def test_report_option_reprints_an_earlier_run(setup, tmp_path, capsys):
    root, truth = setup
    table = write_table(tmp_path / "table.toml", true_rows(truth, cola=(3.0, 1.0)))
    assert reproduce(root, tmp_path / "out", table) == 1
    capsys.readouterr()
    markdown = (tmp_path / "out" / "report.md").read_text()
    # Nothing is evaluated: the checkpoints and data named in the report need not exist any more.
    moved = tmp_path / "moved.json"
    shutil.copyfile(str(tmp_path / "out" / "report.json"), str(moved))
    code = main(["reproduce", "--report", str(moved), "--checkpoint-dir", str(tmp_path / "nowhere")])
    assert code == 1
    assert capsys.readouterr().out.strip() == markdown.strip()
    assert main(["reproduce", "--report", str(tmp_path / "absent.json")]) == 2
    (tmp_path / "bad.json").write_text('{"tasks": 3}')
    assert main(["reproduce", "--report", str(tmp_path / "bad.json")]) == 2
    assert "not a `top reproduce` report" in capsys.readouterr().err
