"""Task facts, the task-file/hub/custom readers, tokenising and batching."""

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from top.data.batching import batches, encode
from top.data.custom import load_custom_file
from top.data.files import Example
from top.data.glue import load_glue_split, write_glue_tsv
from top.data.hub_copy import load_hub_split
from top.data.loading import load_task_data
from top.data.tasks import GLUE_TASKS, METRIC_NAMES, TASKS, TASKS_FILE, get_task, load_tasks
from top.errors import UserError

# --------------------------------------------------------------------------- tasks


@pytest.mark.parametrize(
    "spelling, name",
    [("CoLA", "cola"), ("SST2", "sst2"), ("SST-2", "sst2"), ("sts-b", "stsb"), ("STSB", "stsb"),
     ("MNLI", "mnli"), ("qnli", "qnli"), ("RTE", "rte"), ("MRPC", "mrpc"), ("QQP", "qqp"),
     ("20news", "20news"), ("20News", "20news"), ("20_newsgroups", "20news"), ("IMDB", "imdb"),
     ("yelp", "yelp"), ("yelp_f", "yelp"), ("Yelp.F", "yelp")],
)
def test_get_task_accepts_the_seed_spellings(spelling, name):
    assert get_task(spelling).name == name


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(UserError) as info:
        get_task("wnli")
    message = str(info.value)
    assert "'wnli'" in message
    for name in TASKS:
        assert name in message


def test_task_table_is_consistent():
    assert list(TASKS) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "20news", "imdb", "yelp"]
    assert GLUE_TASKS == ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")
    for task in TASKS.values():
        assert task.metric in task.metrics
        assert set(task.metrics) <= set(METRIC_NAMES)
        assert task.is_regression == (task.name == "stsb")
        assert task.is_regression or len(task.labels) == task.num_labels
        assert 0 < task.preset.sparsity < 1
        assert task.preset.warmup_epochs < task.preset.epochs
        assert task.dev_size <= task.train_size
        assert task.benchmark == ("glue" if task.name in GLUE_TASKS else "long-documents")
        assert task.file_format == ("tsv" if task.name in GLUE_TASKS else "jsonl")
    assert get_task("mnli").labels == ("entailment", "neutral", "contradiction")
    assert get_task("mnli").dev_file == "dev_matched.tsv"
    assert get_task("mnli").hub_dev_split == "validation_matched"
    assert {t.name: t.task_length for t in TASKS.values()} == {
        "cola": 64, "sst2": 64, "stsb": 64, "mrpc": 128, "qqp": 128, "mnli": 128, "qnli": 128, "rte": 256,
        "20news": 512, "imdb": 512, "yelp": 512,
    }


def test_long_document_tasks_are_the_originals():
    """models/l0_module.py's lengths, trainer/trainer.py's metric, and Yelp.F's five classes."""
    for name, classes in (("20news", 20), ("imdb", 2), ("yelp", 5)):
        task = get_task(name)
        expected = ("accuracy", ("accuracy",), classes, 512)
        assert (task.metric, task.metrics, task.num_labels, task.task_length) == expected
        assert (task.text_a, task.text_b, task.label_column) == ("text", None, "label")
        assert task.preset is not None and task.hub_text_a == "text" and task.hub_dev_split == "test"
    assert get_task("20news").labels[0] == "alt.atheism" and get_task("20news").labels[-1] == "talk.religion.misc"
    assert get_task("yelp").file_labels == ("1", "2", "3", "4", "5")
    assert get_task("imdb").file_labels == get_task("imdb").labels == ("neg", "pos")


@pytest.mark.parametrize(
    "old, new, field",
    [
        ('task_length = 64\n', 'task_length = "64"\n', "task_length"),
        ('task_length = 64\n', 'task_length = 64\ncolour = "red"\n', "colour"),
        ('dev_size = 1043\n', '', "dev_size"),
        ('metric = "matthews_correlation"\n', 'metric = "mcc"\n', "metric"),
        ('label_encoding = "index"\n', 'label_encoding = "ids"\n', "label_encoding"),
        ('bin_num = 20\n', 'bin_num = 2.5\n', "bin_num"),
        ('bin_num = 20\n', 'bin_num = 0\n', "preset.bin_num"),
        ('sparsity = 0.43\n', 'sparsity = 1.0\n', "preset.sparsity"),
        ('f1 = "F1"\n', '', "f1"),
        ('f1 = "F1"\n', 'f1 = "F1"\nmcc = "MCC"\n', "mcc"),
        ('accuracy = "Accuracy"\n', 'accuracy = 1\n', "accuracy"),
        ('[metric_labels]\n', '[metric_names]\n', "metric_labels"),
        ('file_format = "jsonl"\n', 'file_format = "parquet"\n', "file_format"),
        ('benchmark = "glue"\n', 'benchmark = "superglue"\n', "benchmark"),
        ('file_labels = ["1", "2", "3", "4", "5"]\n', 'file_labels = ["1", "2"]\n', "file_labels"),
        ('aliases = ["20newsgroups", "20_newsgroups"]\n', 'aliases = ["20newsgroups", "imdb"]\n', "imdb"),
    ],
)
def test_tasks_toml_schema_errors_name_the_field(tmp_path, old, new, field):
    text = TASKS_FILE.read_text()
    assert old in text
    broken = tmp_path / "tasks.toml"
    broken.write_text(text.replace(old, new, 1))
    with pytest.raises(UserError) as info:
        load_tasks(broken)
    assert str(broken) in str(info.value)
    assert field in str(info.value)


# --------------------------------------------------------------------------- GLUE TSV files

GLUE_FILES = {
    "cola": (
        "CoLA/dev.tsv",
        "gj04\t1\t\tOur friends won't buy this analysis.\n"
        "gj04\t0\t*\tThey drank the pub \"dry\".\n",
        [Example("Our friends won't buy this analysis.", None, 1), Example('They drank the pub "dry".', None, 0)],
    ),
    "sst2": (
        "SST-2/dev.tsv",
        "sentence\tlabel\nit 's a charming journey . \t1\nunflinchingly bleak\t0\n",
        [Example("it 's a charming journey . ", None, 1), Example("unflinchingly bleak", None, 0)],
    ),
    "mrpc": (
        "MRPC/dev.tsv",
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t1355540\t1355592\tHe said \"no\".\tHe said no.\n"
        "0\t2029631\t2029565\tA cat.\tA dog.\n",
        [Example('He said "no".', "He said no.", 1), Example("A cat.", "A dog.", 0)],
    ),
    "qqp": (
        "QQP/dev.tsv",
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "201359\t303345\t303346\tWhy are you here?\tWhy are we here?\t0\n"
        "263843\t69383\t\tcorrupted row without a label\n"
        "172974\t1\t2\tHow do I learn?\tHow can I learn?\t1\n",
        [Example("Why are you here?", "Why are we here?", 0), Example("How do I learn?", "How can I learn?", 1)],
    ),
    "stsb": (
        "STS-B/dev.tsv",
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat.\tA man wearing a hat.\t5.000\n"
        "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA kid is playing.\tA woman cooks.\t0.250\n",
        [Example("A man with a hard hat.", "A man wearing a hat.", 5.0),
         Example("A kid is playing.", "A woman cooks.", 0.25)],
    ),
    "mnli": (
        "MNLI/dev_matched.tsv",
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
        "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
        "0\t63735\t63735n\tslate\t( ( The ) )\t( ( It ) )\t(ROOT (S))\t(ROOT (S))\tThe new rights are nice "
        "enough\tEveryone really likes the \"newest\" benefits \t"
        "neutral\tentailment\tneutral\tneutral\tneutral\tneutral\n"
        "1\t91383\t91383c\tgovernment\t( x )\t( y )\t(ROOT)\t(ROOT)\tThis site includes a list.\t"
        "The site has no list.\t" + "\t".join(["contradiction"] * 6) + "\n"
        "2\t755\t755e\tfiction\t( x )\t( y )\t(ROOT)\t(ROOT)\tHe ran.\tHe moved.\tentailment\tentailment\t"
        "neutral\tentailment\tentailment\tentailment\n",
        [Example("The new rights are nice enough", 'Everyone really likes the "newest" benefits ', 1),
         Example("This site includes a list.", "The site has no list.", 2),
         Example("He ran.", "He moved.", 0)],
    ),
    "qnli": (
        "QNLI/dev.tsv",
        "index\tquestion\tsentence\tlabel\n0\tWhat came into force?\tThe law came into force.\tentailment\n"
        "1\tWho won?\tIt rained.\tnot_entailment\n",
        [Example("What came into force?", "The law came into force.", 0), Example("Who won?", "It rained.", 1)],
    ),
    "rte": (
        "RTE/dev.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\tDana Reeve died.\tChristopher Reeve had an accident.\tnot_entailment\n"
        "1\tYet, we now are discovering.\tWe discover.\tentailment\n",
        [Example("Dana Reeve died.", "Christopher Reeve had an accident.", 1),
         Example("Yet, we now are discovering.", "We discover.", 0)],
    ),
}


def _write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("task", sorted(GLUE_FILES))
def test_each_glue_layout_is_parsed(tmp_path, task):
    relative, text, expected = GLUE_FILES[task]
    _write(tmp_path, relative, text)
    assert load_glue_split(task, tmp_path, "dev") == expected
    # The task's own folder works as --data-dir too.
    assert load_glue_split(task, tmp_path / relative.split("/")[0], "dev") == expected


def test_label_types_follow_the_task(tmp_path):
    for task in ("stsb", "cola"):
        relative, text, _ = GLUE_FILES[task]
        _write(tmp_path, relative, text)
    assert all(isinstance(e.label, float) for e in load_glue_split("STS-B", tmp_path))
    assert all(type(e.label) is int for e in load_glue_split("CoLA", tmp_path))


def test_mnli_train_file_has_its_own_columns(tmp_path):
    header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
              "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n")
    _write(tmp_path, "MNLI/train.tsv", header + "0\t1\t1e\tfiction\tx\ty\tx\ty\tA b.\tA.\tentailment\tentailment\n")
    assert load_glue_split("mnli", tmp_path, "train") == [Example("A b.", "A.", 0)]


@pytest.mark.parametrize("task", sorted(GLUE_FILES))
@pytest.mark.parametrize("split", ["dev", "train"])
def test_write_glue_tsv_round_trips(tmp_path, task, split):
    _, _, examples = GLUE_FILES[task]
    spec = get_task(task)
    path = tmp_path / spec.glue_dir / spec.file_name(split)
    write_glue_tsv(task, examples, path, split=split)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(examples) + int(spec.has_header)
    assert all(len(line.split("\t")) == len(spec.split_columns(split)) for line in lines)
    assert load_glue_split(task, tmp_path, split) == examples


def test_write_glue_tsv_refuses_tabs(tmp_path):
    with pytest.raises(UserError):
        write_glue_tsv("sst2", [Example("a\tb", None, 1)], tmp_path / "dev.tsv")


def test_missing_directory_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(UserError) as info:
        load_glue_split("cola", tmp_path / "nowhere")
    assert "nowhere" in str(info.value) and "--data-dir" in str(info.value)
    assert "prepare_glue.py" in str(info.value)


def test_missing_file_names_the_expected_path(tmp_path):
    with pytest.raises(UserError) as info:
        load_glue_split("mnli", tmp_path)
    assert str(tmp_path / "MNLI" / "dev_matched.tsv") in str(info.value)


def test_header_without_the_needed_column(tmp_path):
    _write(tmp_path, "RTE/dev.tsv", "index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(UserError) as info:
        load_glue_split("rte", tmp_path)
    assert "sentence1" in str(info.value) and "dev.tsv" in str(info.value)


def test_unknown_label_names_the_line(tmp_path):
    _write(tmp_path, "RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n")
    with pytest.raises(UserError) as info:
        load_glue_split("rte", tmp_path)
    assert "line 3" in str(info.value) and "'maybe'" in str(info.value)


def test_label_out_of_range(tmp_path):
    _write(tmp_path, "SST-2/dev.tsv", "sentence\tlabel\nfine\t2\n")
    with pytest.raises(UserError):
        load_glue_split("sst2", tmp_path)


def test_unknown_split(tmp_path):
    with pytest.raises(UserError):
        load_glue_split("sst2", tmp_path, "test")


# --------------------------------------------------------------------------- long-document JSON lines

LONG_FILES = {
    "20news": ([{"text": "From: a\nSubject: b\n\nThe engine of my car", "label": 7, "label_text": "rec.autos"},
                {"text": "", "label": 0}],
               [Example("From: a\nSubject: b\n\nThe engine of my car", None, 7), Example("", None, 0)]),
    "imdb": ([{"text": "A <br />long review", "label": 1}, {"text": "Dull.", "label": 0}],
             [Example("A <br />long review", None, 1), Example("Dull.", None, 0)]),
    # The original's convert_yelp.py writes the stars as they are in the csv, 1 to 5.
    "yelp": ([{"text": "Great tacos.", "label": 5}, {"text": "Cold food.", "label": 1}, {"text": "Meh", "label": "3"}],
             [Example("Great tacos.", None, 4), Example("Cold food.", None, 0), Example("Meh", None, 2)]),
}


@pytest.mark.parametrize("task", sorted(LONG_FILES))
@pytest.mark.parametrize("name", ["dev.jsonl", "dev.json"])
def test_each_long_document_layout_is_parsed(tmp_path, task, name):
    records, expected = LONG_FILES[task]
    _write(tmp_path, f"{task}/{name}", "".join(json.dumps(r) + "\n" for r in records) + "\n")
    assert load_glue_split(task, tmp_path, "dev") == expected
    assert load_glue_split(task, tmp_path / task, "dev") == expected


@pytest.mark.parametrize("task", sorted(LONG_FILES))
def test_long_document_files_round_trip(tmp_path, task):
    _, examples = LONG_FILES[task]
    spec = get_task(task)
    write_glue_tsv(task, examples, tmp_path / spec.glue_dir / spec.file_name("train"), split="train")
    assert load_glue_split(task, tmp_path, "train") == examples
    first = json.loads((tmp_path / task / "train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"text", "label"} and isinstance(first["label"], int)


@pytest.mark.parametrize(
    "task, line, needle",
    [
        ("yelp", {"text": "a", "label": 0}, "label 0 is not one of 1, 2, 3, 4, 5"),
        ("20news", {"text": "a", "label": 20}, "outside 0..19"),
        ("imdb", {"text": "a", "label": "pos"}, "not a class number 0..1"),
        ("imdb", {"text": "a", "label": 1.0}, "not a class number"),
        ("imdb", {"text": "a"}, "has no 'label'"),
        ("imdb", {"review": "a", "label": 1}, "has no 'text'"),
        ("imdb", {"text": {"body": "a"}, "label": 1}, "not text"),
        ("imdb", [1, 2], "not an object"),
    ],
)
def test_bad_long_document_lines_are_named(tmp_path, task, line, needle):
    _write(tmp_path, f"{task}/dev.jsonl", json.dumps({"text": "fine", "label": 1}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(UserError) as info:
        load_glue_split(task, tmp_path, "dev")
    assert f"{tmp_path / task / 'dev.jsonl'} line 2" in str(info.value) and needle in str(info.value)


def test_missing_long_document_file_names_the_layout(tmp_path):
    with pytest.raises(UserError) as info:
        load_glue_split("20news", tmp_path, "train")
    message = str(info.value)
    assert str(tmp_path / "20news" / "train.jsonl") in message and "20news/dev.jsonl" in message
    assert "JSON lines" in message and "prepare_glue.py --tasks 20news" in message


def test_glue_rows_dropped_as_the_builder_drops_them_are_named(tmp_path, caplog):
    relative, text, expected = GLUE_FILES["qqp"]
    _write(tmp_path, relative, text)
    with caplog.at_level("WARNING", logger="top.data.glue"):
        assert load_glue_split("qqp", tmp_path, "dev") == expected
    (line,) = [r.getMessage() for r in caplog.records]
    assert str(tmp_path / relative) in line and "dropped 1 row" in line and "line 3" in line, line


# --------------------------------------------------------------------------- the hub copy


def _fake_datasets(monkeypatch, load_dataset):
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_hub_split_maps_fields_and_splits(monkeypatch):
    calls = []

    def load_dataset(path, config, split):
        calls.append((path, config, split))
        return [
            {"premise": "p1", "hypothesis": "h1", "label": 2, "idx": 0},
            {"premise": "p2", "hypothesis": "h2", "label": 0, "idx": 1},
        ]

    _fake_datasets(monkeypatch, load_dataset)
    assert load_hub_split("MNLI", "dev") == [Example("p1", "h1", 2), Example("p2", "h2", 0)]
    assert calls == [("glue", "mnli", "validation_matched")]


def test_long_document_hub_copies_have_no_config(monkeypatch):
    calls = []

    def load_dataset(path, config, split):
        calls.append((path, config, split))
        return [{"text": "post", "label": 3, "label_text": "comp.sys.ibm.pc.hardware"}, {"text": "x", "label": -1}]

    _fake_datasets(monkeypatch, load_dataset)
    data = load_task_data("20news", max_seq_length=512, splits=("dev",))
    assert data.dev == [Example("post", None, 3)] and data.source == "datasets:SetFit/20_newsgroups/test"
    load_hub_split("yelp", "train")
    assert calls == [("SetFit/20_newsgroups", None, "test"), ("Yelp/yelp_review_full", None, "train")]


def test_a_long_task_read_shorter_than_its_length_is_said(tmp_path, caplog):
    records, expected = LONG_FILES["imdb"]
    for split in ("train", "dev"):
        _write(tmp_path, f"imdb/{split}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    with caplog.at_level("WARNING", logger="top.data.loading"):
        assert load_task_data("imdb", tmp_path, max_seq_length=512).dev == expected
        assert not caplog.records
        load_task_data("imdb", tmp_path, max_seq_length=256)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "imdb" in line and "--max-seq-length 256" in line and "--max-seq-length 512" in line


def test_hub_regression_labels_are_floats(monkeypatch):
    _fake_datasets(monkeypatch, lambda p, c, split: [{"sentence1": "a", "sentence2": "b", "label": 3}])
    (example,) = load_hub_split("stsb", "train")
    assert isinstance(example.label, float) and example.label == 3.0


def test_hub_unreachable_is_a_user_error(monkeypatch):
    def load_dataset(path, config, split):
        raise ConnectionError("Couldn't reach the hub")

    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(UserError) as info:
        load_hub_split("cola")
    assert "--data-dir" in str(info.value)


def test_hub_without_datasets_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UserError) as info:
        load_hub_split("cola")
    assert "datasets" in str(info.value) and "--data-dir" in str(info.value)


# --------------------------------------------------------------------------- custom files


def test_custom_csv_with_quotes_and_string_labels(tmp_path):
    path = _write(tmp_path, "d.csv", 'sentence,label\n"Hello, world",pos\nbad,neg\nok,pos\n')
    examples, is_regression, labels = load_custom_file(path)
    assert not is_regression
    assert labels == ["neg", "pos"]
    assert examples == [Example("Hello, world", None, 1), Example("bad", None, 0), Example("ok", None, 1)]


def test_custom_tsv_pairs_with_integer_labels_sorted_numerically(tmp_path):
    path = _write(tmp_path, "d.tsv", 'sentence\tsentence2\tlabel\na "b\tc\t10\nd\te\t2\nf\tg\t10\n')
    examples, is_regression, labels = load_custom_file(path)
    assert (is_regression, labels) == (False, ["2", "10"])
    assert examples == [Example('a "b', "c", 1), Example("d", "e", 0), Example("f", "g", 1)]


def test_custom_float_labels_make_regression(tmp_path):
    path = _write(tmp_path, "d.csv", "sentence1,sentence2,label\na,b,0.5\nc,d,3\n")
    examples, is_regression, labels = load_custom_file(path)
    assert is_regression and labels == []
    assert examples == [Example("a", "b", 0.5), Example("c", "d", 3.0)]


def test_custom_json_list_and_lines(tmp_path):
    records = [{"sentence": "a", "label": 1}, {"sentence": "b", "label": 0}]
    as_list = _write(tmp_path, "d.json", json.dumps(records))
    as_lines = _write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in records) + "\n")
    lines_in_json = _write(tmp_path, "e.json", "\n".join(json.dumps(r) for r in records))
    expected = ([Example("a", None, 1), Example("b", None, 0)], False, ["0", "1"])
    assert load_custom_file(as_list) == expected
    assert load_custom_file(as_lines) == expected
    assert load_custom_file(lines_in_json) == expected


def test_custom_json_float_labels(tmp_path):
    path = _write(tmp_path, "d.json", json.dumps([{"sentence": "a", "label": 1.0}, {"sentence": "b", "label": 2}]))
    examples, is_regression, _ = load_custom_file(path)
    assert is_regression and [e.label for e in examples] == [1.0, 2.0]


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("d.csv", "label\n1\n", "besides 'label'"),
        ("d.csv", "sentence,target\na,1\n", "label"),
        ("d.csv", "sentence,label,label\na,1,0\n", "'label' twice"),
        ("d.json", '[{"sentence": "a", "label": 1, "label": 0}]', "'label' twice"),
        ("d.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b", "label": 1, "label": 0}\n', "line 2"),
        ("d.json", json.dumps([{"sentence": {"text": "a"}, "label": 1}]), "a JSON object, not text"),
        ("d.jsonl", json.dumps({"text": ["a", "b"], "label": 1}) + "\n", "a JSON list, not text"),
        ("d.jsonl", json.dumps({"text": 5, "label": 1}) + "\n", "int 5, not text"),
        ("d.json", json.dumps([{"sentence": "a", "label": {"x": 1}}]), "example 1 has a label that is a JSON object"),
        ("d.tsv", 'sentence\tlabel\n"good\tfilm"\t1\n"bad\tfilm"\t0\n', "line 2 has 3 tab-separated fields"),
        ("d.csv", "sentence,label\ngood,film,1\n", "line 2 has 3 fields but its header has 2"),
        ("d.csv", 'sentence,label\n"a\nb",1\nc,\n', "line 4 has no 'label'"),
        ("d.json", json.dumps([{"sentence": "a"}]), "label"),
        ("d.csv", "", "no examples"),
        ("d.csv", "sentence,label\n", "no examples"),
        ("d.json", "", "no examples"),
        ("d.csv", "sentence,label\na,\n", "label"),
        ("d.txt", "sentence,label\na,1\n", ".csv"),
        ("d.json", "{not json", "JSON"),
    ],
)
def test_custom_bad_files_name_the_file(tmp_path, name, text, needle):
    path = _write(tmp_path, name, text)
    with pytest.raises(UserError) as info:
        load_custom_file(path)
    assert str(path) in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize(
    "header, pair, text_a, text_b",
    [
        ("text,label,label_text", False, "text", None),  # SetFit/20_newsgroups's columns
        ("label,sentence", False, "sentence", None),
        ("sentence,sentence2,label", True, "sentence", "sentence2"),
        ("sentence1,label", False, "sentence1", None),
        ("idx,sentence2,label,sentence1", True, "sentence1", "sentence2"),
        ("review,label", False, "review", None),  # the only other column
        ("premise,label,hypothesis,genre", True, "premise", "hypothesis"),  # run_glue: the first two others
        ("text,sentence,label", False, "sentence", None),
    ],
)
def test_custom_text_columns_are_chosen_as_run_glue_chooses_them(tmp_path, caplog, header, pair, text_a, text_b):
    columns = header.split(",")
    values = {name: ("1" if name == "label" else f"{name} words") for name in columns}
    path = _write(tmp_path, "d.csv", header + "\n" + ",".join(values[c] for c in columns) + "\n")
    with caplog.at_level("INFO", logger="top.data.custom"):
        (example,), _, _ = load_custom_file(path)
    assert example == Example(f"{text_a} words", f"{text_b} words" if pair else None, 0)
    (line,) = [r.getMessage() for r in caplog.records]
    assert str(path) in line and repr(text_a) in line and ("as pairs" in line) == pair, line


def test_custom_files_with_trailing_separators_read(tmp_path):
    """A spreadsheet's export may end rows and the header with empty fields: nothing is lost there."""
    path = _write(tmp_path, "d.csv", "sentence,label,,\nthe film,1,,\na plot,0,\n")
    assert load_custom_file(path)[0] == [Example("the film", None, 1), Example("a plot", None, 0)]
    path = _write(tmp_path, "d.tsv", "sentence\tlabel\nthe film\t1\t\na plot\t0\n")
    assert load_custom_file(path)[0] == [Example("the film", None, 1), Example("a plot", None, 0)]


def test_custom_json_lines_with_text_and_label_read_and_name_the_columns(tmp_path, caplog):
    path = _write(tmp_path, "train.jsonl", "".join(
        json.dumps({"text": text, "label": label, "label_text": name}) + "\n"
        for text, label, name in (("a long post", 3, "comp.sys"), ("another", 0, "alt"))))
    with caplog.at_level("INFO", logger="top.data.custom"):
        examples, is_regression, labels = load_custom_file(path)
    assert examples == [Example("a long post", None, 1), Example("another", None, 0)]
    assert (is_regression, labels) == (False, ["0", "3"])
    assert "the column 'text'" in caplog.text and "'label_text'" in caplog.text


def test_custom_missing_file(tmp_path):
    with pytest.raises(UserError):
        load_custom_file(tmp_path / "absent.csv")


# --------------------------------------------------------------------------- the one lookup


def test_glue_folder_gives_train_and_dev_with_the_task_and_its_file(tmp_path):
    relative, text, expected = GLUE_FILES["sst2"]
    _write(tmp_path, relative, text)
    _write(tmp_path, "SST-2/train.tsv", "sentence\tlabel\ngood\t1\n")
    data = load_task_data("SST-2", tmp_path, max_seq_length=99)
    assert data.task is get_task("sst2") and data.name == "sst2" and not data.is_custom
    assert (data.train, data.dev) == ([Example("good", None, 1)], expected)
    assert (data.num_labels, data.task_length, data.metric) == (2, 64, "accuracy")
    assert data.source == str(tmp_path / relative)
    dev_only = load_task_data("sst2", tmp_path, max_seq_length=99, splits=("dev",))
    assert (dev_only.train, dev_only.dev) == ([], expected)


def test_hub_copy_is_read_without_a_data_dir_and_named_in_the_source(monkeypatch):
    calls = []

    def load_dataset(path, config, split):
        calls.append(split)
        return [{"sentence": f"{split} text", "label": 1, "idx": 0}]

    _fake_datasets(monkeypatch, load_dataset)
    data = load_task_data("cola", max_seq_length=128)
    assert calls == ["train", "validation"]
    assert data.dev == [Example("validation text", None, 1)] and data.train == [Example("train text", None, 1)]
    assert data.source == "datasets:glue/cola/validation"
    load_task_data("cola", max_seq_length=128, splits=("dev",))
    assert calls[2:] == ["validation"]


def test_custom_files_become_a_task_and_dev_is_numbered_by_the_train_labels(tmp_path):
    train = _write(tmp_path, "train.csv", "sentence,label\na,pos\nb,neg\nc,mid\n")
    dev = _write(tmp_path, "dev.csv", "sentence,label\nd,pos\ne,mid\n")
    data = load_task_data(train_file=train, validation_file=dev, max_seq_length=48)
    assert data.is_custom and data.name == "custom" and data.source == str(dev)
    assert data.task.labels == ("mid", "neg", "pos") and data.num_labels == 3
    assert (data.task.metrics, data.task_length, data.task.preset) == (("accuracy",), 48, None)
    # dev.csv alone numbers mid=0, pos=1; the train file's list makes them 0 and 2.
    assert [e.label for e in data.dev] == [2, 0]
    alone = load_task_data(validation_file=dev, max_seq_length=48, splits=("dev",))
    assert [e.label for e in alone.dev] == [1, 0] and alone.num_labels == 2 and alone.train == []


def test_custom_regression_files_score_correlations(tmp_path):
    train = _write(tmp_path, "train.csv", "sentence,sentence2,label\na,b,0.5\nc,d,2.5\n")
    dev = _write(tmp_path, "dev.csv", "sentence,sentence2,label\ne,f,1.5\n")
    data = load_task_data(train_file=train, validation_file=dev, max_seq_length=32)
    assert data.is_regression and data.num_labels == 1 and data.task.is_pair
    assert data.task.metrics == ("pearson", "spearmanr") and data.metric == "pearson"


@pytest.mark.parametrize(
    "train_text, dev_text, needle",
    [
        ("sentence,label\na,0.5\n", "sentence,label\nb,pos\n", "disagree"),
        ("sentence,label\na,pos\n", "sentence,label\nb,neg\n", "never uses"),
    ],
)
def test_custom_files_that_do_not_match_name_both(tmp_path, train_text, dev_text, needle):
    train, dev = _write(tmp_path, "train.csv", train_text), _write(tmp_path, "dev.csv", dev_text)
    with pytest.raises(UserError) as info:
        load_task_data(train_file=train, validation_file=dev, max_seq_length=32)
    assert needle in str(info.value) and str(dev) in str(info.value)


def test_an_empty_dev_set_is_a_user_error(tmp_path):
    _write(tmp_path, "SST-2/dev.tsv", "sentence\tlabel\n")
    with pytest.raises(UserError) as info:
        load_task_data("sst2", tmp_path, max_seq_length=32, splits=("dev",))
    assert "has no examples" in str(info.value) and str(tmp_path / "SST-2" / "dev.tsv") in str(info.value)


@pytest.mark.parametrize(
    "kwargs, splits, needle",
    [
        ({"task": "cola", "validation_file": "dev.csv"}, ("dev",), "not both"),
        ({"task": "cola", "train_file": "t.csv", "validation_file": "dev.csv"}, ("train", "dev"), "not both"),
        ({}, ("dev",), "--validation-file"),
        ({"train_file": "t.csv"}, ("train", "dev"), "both --train-file and --validation-file"),
        ({"validation_file": "dev.csv"}, ("train", "dev"), "both --train-file and --validation-file"),
    ],
)
def test_the_data_flags_must_name_one_source(kwargs, splits, needle):
    with pytest.raises(UserError) as info:
        load_task_data(max_seq_length=32, splits=splits, **kwargs)
    assert needle in str(info.value) and "--task" in str(info.value)


# --------------------------------------------------------------------------- tokenising

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "very", "fast", "today", "."]


@pytest.fixture(params=["fast", "slow"])
def tokenizer(request, tmp_path):
    from transformers import BertTokenizer, BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    cls = BertTokenizerFast if request.param == "fast" else BertTokenizer
    return cls(vocab_file=str(vocab), do_lower_case=True)


def _ids(tokenizer, text):
    return tokenizer.convert_tokens_to_ids(text.split())


def test_encode_single_sentences_pads_to_max_length(tokenizer):
    examples = [Example("the cat sat", None, 1), Example("a dog", None, 0)]
    out = encode(examples, tokenizer, max_seq_length=8)
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    assert out["input_ids"].shape == (2, 8)
    assert out["input_ids"][0].tolist() == [cls_id] + _ids(tokenizer, "the cat sat") + [sep_id] + [pad_id] * 3
    assert out["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert out["token_type_ids"].sum().item() == 0
    assert out["labels"].dtype == torch.long and out["labels"].tolist() == [1, 0]


def test_encode_pairs_truncates_longest_first(tokenizer):
    long_a = "the cat sat on the mat a dog ran far"  # 10 tokens
    examples = [Example(long_a, "very fast today", 1)]
    out = encode(examples, tokenizer, max_seq_length=10)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    # 10 - 3 special tokens = 7: the longer sentence loses tokens until the pair fits.
    expected = [cls_id] + _ids(tokenizer, "the cat sat on") + [sep_id] + _ids(tokenizer, "very fast today") + [sep_id]
    assert out["input_ids"][0].tolist() == expected
    assert out["token_type_ids"][0].tolist() == [0] * 6 + [1] * 4
    assert out["attention_mask"][0].tolist() == [1] * 10


def test_encode_longest_padding_and_float_labels(tokenizer):
    examples = [Example("the cat", "a dog", 0.5), Example("the cat sat on the mat", "a dog ran", 4.25)]
    out = encode(examples, tokenizer, max_seq_length=64, padding="longest")
    assert out["input_ids"].shape == (2, 3 + 6 + 3)
    assert out["attention_mask"][0].sum().item() == 3 + 2 + 2
    assert out["labels"].dtype == torch.float and out["labels"].tolist() == [0.5, 4.25]


def test_encode_rejects_empty_and_mixed(tokenizer):
    with pytest.raises(UserError):
        encode([], tokenizer, 8)
    with pytest.raises(ValueError):
        encode([Example("a", None, 0), Example("a", "b", 0)], tokenizer, 8)
    with pytest.raises(ValueError):
        encode([Example("a", None, 0)], tokenizer, 8, padding="do_not_pad")


def test_batches_keep_file_order(tokenizer):
    examples = [Example(w, None, i % 2) for i, w in enumerate(WORDS[:7])]
    encoded = encode(examples, tokenizer, max_seq_length=4)
    got = list(batches(encoded, batch_size=3))
    assert [len(b["input_ids"]) for b in got] == [3, 3, 1]
    assert set(got[0]) == set(encoded)
    assert torch.equal(torch.cat([b["input_ids"] for b in got]), encoded["input_ids"])
    assert [t for b in got for t in b["input_ids"][:, 1].tolist()] == _ids(tokenizer, " ".join(WORDS[:7]))
    with pytest.raises(UserError):
        list(batches(encoded, 0))
