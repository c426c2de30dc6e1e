"""The paper's results table: schema, internal consistency, and the loader's errors."""

import pytest

from top.data.published import SCORE_RANGES, PublishedResult, load_results_table
from top.data.tasks import GLUE_TASKS, METRIC_NAMES, TASKS
from top.errors import UserError
from top.evaluation.metrics import compute_metrics

README_ORDER = ["cola", "rte", "qqp", "mrpc", "sst2", "mnli", "qnli", "stsb"]


def test_table_covers_every_glue_task_in_the_readme_order():
    """The authors published GLUE only: the long-document tasks have no row."""
    table = load_results_table()
    assert list(table) == README_ORDER
    assert set(table) == set(GLUE_TASKS)


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
        assert row.checkpoint == expected and row.is_published == (name != "rte")


# GLUE's dev sets (MNLI: matched), as the issue that introduced dev_examples lists them.
GLUE_DEV_SIZES = {"cola": 1043, "sst2": 872, "mrpc": 408, "stsb": 1500, "qqp": 40430, "mnli": 9815,
                  "qnli": 5463, "rte": 277}


def test_dev_examples_are_glue_dev_sizes_and_equal_tasks_toml():
    """published.toml's dev_examples and tasks.toml's dev_size are one fact written twice: held equal here."""
    table = load_results_table()
    assert {name: row.dev_examples for name, row in table.items()} == GLUE_DEV_SIZES
    assert {name: TASKS[name].dev_size for name in GLUE_TASKS} == GLUE_DEV_SIZES


def test_every_metric_has_a_score_range():
    assert set(SCORE_RANGES) == set(METRIC_NAMES)
    for metric in ("matthews_correlation", "pearson", "spearmanr"):
        assert SCORE_RANGES[metric] == (-100.0, 100.0)
    for metric in ("accuracy", "f1"):
        assert SCORE_RANGES[metric] == (0.0, 100.0)


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
    assert row.dev_examples is None  # optional: not checked when absent
    path.write_text(ROW + "dev_examples = 23\n")
    assert load_results_table(path)["cola"].dev_examples == 23


@pytest.mark.parametrize("score", [-12.5, -100, 0, 100])
def test_a_correlation_may_be_negative(tmp_path, score):
    path = tmp_path / "p.toml"
    path.write_text(ROW.replace("score = 60.3", f"score = {score}"))
    assert load_results_table(path)["cola"].score == score
    stsb = ROW.replace("[cola]", "[stsb]").replace("matthews_correlation", "pearson")
    path.write_text(stsb.replace("score = 60.3", f"score = {score}"))
    assert load_results_table(path)["stsb"].score == score


@pytest.mark.parametrize(
    "metric, task, score",
    [("matthews_correlation", "cola", -100.5), ("matthews_correlation", "cola", 101), ("pearson", "stsb", -101),
     ("accuracy", "sst2", -0.1), ("accuracy", "sst2", 100.1), ("f1", "mrpc", -3)],
)
def test_a_score_outside_its_metrics_range_is_refused(tmp_path, metric, task, score):
    path = tmp_path / "p.toml"
    path.write_text(ROW.replace("[cola]", f"[{task}]").replace("matthews_correlation", metric)
                    .replace("score = 60.3", f"score = {score}"))
    with pytest.raises(UserError) as info:
        load_results_table(path)
    message = str(info.value)
    assert str(path) in message and f"{task}.score" in message and metric in message
    low, high = SCORE_RANGES[metric]
    assert f"outside {low:g} to {high:g}" in message


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
        ("flops_tolerance = 0.05\n", "flops_tolerance = 0.05\ndev_examples = 0\n", "dev_examples"),
        ("flops_tolerance = 0.05\n", "flops_tolerance = 0.05\ndev_examples = 23.5\n", "dev_examples"),
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


@pytest.mark.parametrize("spelling, task", [("20news", "20news"), ("imdb", "imdb"), ("yelp", "yelp"),
                                            ("yelp_f", "yelp"), ('"20_newsgroups"', "20news"), ('"SST-2"', "sst2")])
def test_a_row_for_any_known_task_parses(tmp_path, spelling, task):
    """Rows of one's own for the long-document tasks (no checkpoint is published for them) parse."""
    path = tmp_path / "p.toml"
    path.write_text(ROW.replace("[cola]", f"[{spelling}]").replace("matthews_correlation", "accuracy")
                    .replace('"senfu/x"', '""') + "dev_examples = 7532\n")
    row = load_results_table(path)[task]
    assert (row.task, row.metric, row.is_published, row.dev_examples) == (task, "accuracy", False, 7532)
    path.write_text(path.read_text() + path.read_text().replace(f"[{spelling}]", f"[{task.upper()}]"))
    with pytest.raises(UserError) as info:
        load_results_table(path)
    assert str(path) in str(info.value) and "one table" in str(info.value)


def test_empty_and_missing_files(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("# nothing\n")
    with pytest.raises(UserError):
        load_results_table(path)
    with pytest.raises(UserError):
        load_results_table(tmp_path / "absent.toml")

