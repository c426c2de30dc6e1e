"""The paper's results table: schema, internal consistency, and the loader's errors."""

import pytest

from top.errors import UserError
from top.metrics import compute_metrics
from top.published import PublishedResult, load_results_table
from top.tasks import TASKS

README_ORDER = ["cola", "rte", "qqp", "mrpc", "sst2", "mnli", "qnli", "stsb"]


def test_table_covers_every_task_in_the_readme_order():
    table = load_results_table()
    assert list(table) == README_ORDER
    assert set(table) == set(TASKS)


def test_rows_are_consistent():
    table = load_results_table()
    for name, row in table.items():
        assert isinstance(row, PublishedResult) and row.task == name
        assert row.metric == TASKS[name].metric
        # the metric exists in metrics.py for that task
        labels = [0.5, 1.5, 2.5] if TASKS[name].is_regression else [0, 1, 1]
        assert row.metric in compute_metrics(TASKS[name], labels, labels)
        assert 50 < row.score < 100
        assert 1 < row.flops_reduction < 20
        assert row.score_tolerance == 0.5 and row.flops_tolerance == 0.05
        expected = "" if name == "rte" else f"senfu/bert-base-uncased-top-pruned-{name}"
        assert row.checkpoint == expected


def test_tolerances():
    row = load_results_table()["cola"]
    assert row.score_matches(row.score + 0.5) and row.score_matches(row.score - 0.49)
    assert not row.score_matches(row.score + 0.51)
    assert row.flops_matches(row.flops_reduction * 1.049)
    assert not row.flops_matches(row.flops_reduction * 0.94)


ROW = (
    '[cola]\nmetric = "matthews_correlation"\nscore = 60.3\nflops_reduction = 10.39\n'
    'checkpoint = "senfu/x"\nscore_tolerance = 0.5\nflops_tolerance = 0.05\n'
)


def test_a_minimal_valid_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(ROW.replace("score = 60.3", "score = 60"))
    row = load_results_table(path)["cola"]
    assert row.score == 60.0 and isinstance(row.score, float)


@pytest.mark.parametrize(
    "old, new, field",
    [
        ("score = 60.3\n", 'score = "60.3"\n', "score"),
        ("score = 60.3\n", "score = 60.3\nsource = 1\n", "source"),
        ('checkpoint = "senfu/x"\n', "", "checkpoint"),
        ('checkpoint = "senfu/x"\n', "checkpoint = 3\n", "checkpoint"),
        ("[cola]", "[colaa]", "colaa"),
        ('metric = "matthews_correlation"', 'metric = "mcc"', "metric"),
        ('metric = "matthews_correlation"', 'metric = "accuracy"', "metric"),
        ("score_tolerance = 0.5", "score_tolerance = -0.5", "score_tolerance"),
        ("score = 60.3", "score = true", "score"),
        ("[cola]", "[cola", "TOML"),
    ],
)
def test_schema_errors_name_the_file_and_field(tmp_path, old, new, field):
    path = tmp_path / "p.toml"
    assert old in ROW
    path.write_text(ROW.replace(old, new))
    with pytest.raises(UserError) as info:
        load_results_table(path)
    assert str(path) in str(info.value) and field in str(info.value)


def test_empty_and_missing_files(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("# nothing\n")
    with pytest.raises(UserError):
        load_results_table(path)
    with pytest.raises(UserError):
        load_results_table(tmp_path / "absent.toml")

