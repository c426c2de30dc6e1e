"""Examples from GLUE's TSV files, the `datasets` hub or a user's own file; tokenised batches.

Every reader returns a list of `Example` in file order: text_a, text_b (None for
single-sentence tasks) and the label as a label id (classification) or a float
(regression).
"""

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from top.errors import UserError, brief
from top.io import atomic_write_text
from top.tasks import Task, get_task

Label = Union[int, float]
TaskLike = Union[str, Task]

PREPARE_HINT = "pass --data-dir pointing at GLUE's layout (e.g. glue_data/CoLA/dev.tsv) or run scripts/prepare_glue.py"


@dataclasses.dataclass(frozen=True)
class Example:
    text_a: str
    text_b: Optional[str]
    label: Label


def _task(task: TaskLike) -> Task:
    return task if isinstance(task, Task) else get_task(task)


def read_text(path: Path) -> str:
    """A data file's text; bytes that are not UTF-8 are the user's to fix, named by line."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path} line {line} holds bytes that are not UTF-8 ({raw[exc.start:exc.start + 4]!r}); "
            "save the file as UTF-8."
        ) from None


def read_rows(path: Path, as_dicts: bool = False, **reader_options: Any) -> List[Any]:
    """Every row of a csv/tsv data file (as dicts keyed by the header with ``as_dicts``).

    A malformed or oversized field is the user's to fix, named by line.
    """
    handle = io.StringIO(read_text(path), newline="")
    reader = csv.DictReader(handle, **reader_options) if as_dicts else csv.reader(handle, **reader_options)
    try:
        return [dict(row) for row in reader] if as_dicts else list(reader)
    except csv.Error as exc:
        line = (reader.reader if as_dicts else reader).line_num  # DictReader's own count lags by a row
        raise UserError(
            f"{path} line {line} cannot be read ({exc}); fix that row "
            f"(a field holds at most {csv.field_size_limit()} characters)."
        ) from None


def glue_file(task: TaskLike, data_dir: Union[str, Path], split: str = "dev") -> Path:
    """The TSV of `split`: `data_dir/<GLUE dir>/<file>`, or `data_dir/<file>` if data_dir is the task's own."""
    task = _task(task)
    data_dir = Path(data_dir)
    name = task.file_name(split)
    if not data_dir.is_dir():
        raise UserError(f"GLUE data directory {data_dir} does not exist; {PREPARE_HINT}.")
    for candidate in (data_dir / task.glue_dir / name, data_dir / name):
        if candidate.is_file():
            return candidate
    raise UserError(f"{data_dir / task.glue_dir / name} does not exist; {PREPARE_HINT}.")


def _parse_label(task: Task, value: str, where: str) -> Label:
    try:
        if task.label_encoding == "float":
            number = float(value)
            if not math.isfinite(number):
                raise UserError(f"{where}: label {brief(value)} is not a finite number; fix or remove that row.")
            return number
        if task.label_encoding == "name":
            return task.labels.index(value)
        label = int(value)
    except ValueError:
        expected = "a number" if task.label_encoding != "name" else "one of " + ", ".join(task.labels)
        raise UserError(f"{where}: label {brief(value)} is not {expected}; fix or remove that row.") from None
    if not 0 <= label < task.num_labels:
        raise UserError(f"{where}: label {brief(label)} is outside 0..{task.num_labels - 1}; fix or remove that row.")
    return label


def load_glue_split(task: TaskLike, data_dir: Union[str, Path], split: str = "dev") -> List[Example]:
    """Read GLUE's own TSV for `split` ("dev" or "train") the way the `datasets` glue builder does.

    Quoting is off (GLUE's sentences contain bare quote characters); rows too short to hold
    every needed column, or with an empty label, are dropped as the builder drops them.
    """
    task = _task(task)
    path = glue_file(task, data_dir, split)
    rows = read_rows(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    if task.has_header:
        if not rows:
            raise UserError(f"{path} is empty; {PREPARE_HINT}.")
        header, rows = rows[0], rows[1:]
        first_line = 2
    else:
        header, first_line = list(task.split_columns(split)), 1
    wanted = [task.text_a, task.label_column] + ([task.text_b] if task.text_b else [])
    missing = [name for name in wanted if name not in header]
    if missing:
        raise UserError(
            f"{path} has no column {', '.join(repr(m) for m in missing)} in its header; "
            f"give it GLUE's header ({', '.join(task.split_columns(split))})."
        )
    i_a = header.index(task.text_a)
    i_b = header.index(task.text_b) if task.text_b else None
    i_label = header.index(task.label_column)
    width = max(i_a, i_label, i_b if i_b is not None else 0) + 1
    examples = []
    for line, row in enumerate(rows, start=first_line):
        if len(row) < width or row[i_label] == "":
            continue
        label = _parse_label(task, row[i_label], f"{path} line {line}")
        examples.append(Example(row[i_a], row[i_b] if i_b is not None else None, label))
    return examples


def _label_text(task: Task, label: Label) -> str:
    if task.label_encoding == "float":
        return repr(float(label))
    if task.label_encoding == "name":
        return task.labels[int(label)]
    return str(int(label))


def write_glue_tsv(task: TaskLike, examples: Sequence[Example], path: Union[str, Path], split: str = "dev") -> None:
    """Write `examples` as GLUE's file for `split`; columns we have no value for stay empty."""
    task = _task(task)
    columns = task.split_columns(split)
    out = io.StringIO()
    if task.has_header:
        out.write("\t".join(columns) + "\n")
    for n, example in enumerate(examples):
        values = {"index": str(n), task.label_column: _label_text(task, example.label), task.text_a: example.text_a}
        if task.text_b:
            values[task.text_b] = example.text_b or ""
        cells = [values.get(column, "") for column in columns]
        if any(("\t" in cell or "\n" in cell or "\r" in cell) for cell in cells):
            raise UserError(
                f"Example {n} for {path} holds a tab or line break, which a GLUE TSV cannot hold; clean its text."
            )
        out.write("\t".join(cells) + "\n")
    atomic_write_text(path, out.getvalue())


# --------------------------------------------------------------------------- the datasets hub


def load_hub_split(task: TaskLike, split: str = "dev") -> List[Example]:
    """The same split from the `datasets` hub copy of GLUE (downloaded once, then cached)."""
    task = _task(task)
    hub_split = {"dev": task.hub_dev_split, "train": "train"}.get(split)
    if hub_split is None:
        raise UserError(f"Unknown split {split!r}; use 'dev' or 'train'.")
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"The `datasets` package is not installed, so {task.name} cannot come from the hub; "
            f"pip install 'top[data]' or {PREPARE_HINT}."
        ) from None
    try:
        rows = datasets.load_dataset(task.hub_path, task.hub_config, split=hub_split)
    except Exception as exc:  # offline, not cached, hub down: all mean "provide the files yourself"
        raise UserError(
            f"Could not load {task.hub_path}/{task.hub_config} ({type(exc).__name__}: {exc}); "
            f"connect once to cache it, or {PREPARE_HINT}."
        ) from None
    examples = []
    for row in rows:
        label = row["label"]
        if task.is_regression:
            label = float(label)
        elif label < 0:  # unlabelled test rows
            continue
        examples.append(Example(row[task.hub_text_a], row[task.hub_text_b] if task.hub_text_b else None, label))
    return examples


# --------------------------------------------------------------------------- a user's own file

CUSTOM_COLUMNS = "'sentence' (or 'sentence1'), optional 'sentence2', and 'label'"
# Longer whole numbers are no label (and Python 3.11 refuses to read those over 4,300 digits).
MAX_LABEL_DIGITS = 100


def _read_records(path: Path) -> List[Dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        options = {} if suffix == ".csv" else {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
        return read_rows(path, as_dicts=True, **options)
    if suffix in (".json", ".jsonl"):
        text = read_text(path)
        if not text.strip():
            return []

        def whole_number(digits: str) -> int:
            if len(digits.lstrip("-")) > MAX_LABEL_DIGITS:
                raise UserError(
                    f"{path} holds a number of {len(digits.lstrip('-'))} digits; a label is a class number or a score "
                    f"of at most {MAX_LABEL_DIGITS} digits, so fix that value."
                )
            return int(digits)

        try:
            try:
                data = json.loads(text, parse_int=whole_number)
            except json.JSONDecodeError:
                # JSON lines, which `datasets` also accepts under .json
                data = [json.loads(line, parse_int=whole_number) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is neither JSON nor JSON lines ({exc}); fix its syntax.") from None
        except RecursionError:
            raise UserError(
                f"{path} nests its JSON deeper than it can be read; give a flat list of objects, one per example."
            ) from None
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            keys = list(data)
            data = [dict(zip(keys, values)) for values in zip(*data.values())]
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UserError(f"{path} must hold a list of objects, one per example; rewrite it so.")
        return data
    raise UserError(f"{path} has an unknown extension; use .csv, .tsv, .json or .jsonl.")


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, str):
        try:
            int(value)
            return True
        except ValueError:
            return False
    return False


def _is_float(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    if isinstance(value, str):
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False
    return False


def _is_non_finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        return not math.isfinite(float(value))
    except (ValueError, OverflowError):
        return False


def load_custom_file(path: Union[str, Path]) -> Tuple[List[Example], bool, List[str]]:
    """Read a csv/tsv/json(l) file with columns 'sentence', optional 'sentence2', 'label'.

    Returns (examples, is_regression, label_list). As in HF run_glue: labels that are
    all integers or strings make a classification task whose label list is sorted
    (numerically for integers) and each label becomes its index; any non-integer
    number makes a regression task with float labels and an empty label list.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass an existing .csv, .tsv, .json or .jsonl file.")
    records = _read_records(path)
    if not records:
        raise UserError(f"{path} holds no examples; give it a header and at least one row with {CUSTOM_COLUMNS}.")
    columns = set().union(*(record.keys() for record in records))
    text_a_key = "sentence" if "sentence" in columns else "sentence1"
    missing = [key for key in (text_a_key, "label") if key not in columns]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}; it needs {CUSTOM_COLUMNS}.")
    text_b_key = "sentence2" if "sentence2" in columns else None
    raw_labels = []
    for n, record in enumerate(records):
        for key in (text_a_key, "label") + ((text_b_key,) if text_b_key else ()):
            value = record.get(key)
            if value is None or value == "":
                raise UserError(f"{path}: example {n + 1} has no {key!r}; fill it in or remove the example.")
        raw_labels.append(record["label"])
        if isinstance(record["label"], str) and len(record["label"].strip().lstrip("+-")) > MAX_LABEL_DIGITS and (
            record["label"].strip().lstrip("+-").isdigit()
        ):
            raise UserError(
                f"{path}: example {n + 1} has a label of {len(record['label'].strip())} digits; a label is a class "
                f"number or a score of at most {MAX_LABEL_DIGITS} digits, so fix that value."
            )
        if _is_non_finite(record["label"]):
            raise UserError(
                f"{path}: example {n + 1} has the label {brief(record['label'])}, which is not a finite number; "
                "fix or remove the example."
            )

    if all(_is_int(label) for label in raw_labels):
        label_list = [str(v) for v in sorted({int(label) for label in raw_labels})]
        labels: List[Label] = [label_list.index(str(int(label))) for label in raw_labels]
        is_regression = False
    elif all(_is_float(label) for label in raw_labels):
        label_list, labels, is_regression = [], [float(label) for label in raw_labels], True
    else:
        names = [str(label) for label in raw_labels]
        label_list = sorted(set(names))
        labels, is_regression = [label_list.index(name) for name in names], False
    examples = [
        Example(str(record[text_a_key]), str(record[text_b_key]) if text_b_key else None, label)
        for record, label in zip(records, labels)
    ]
    return examples, is_regression, label_list


# --------------------------------------------------------------------------- the one lookup

CUSTOM_TASK = "custom"
SPLITS = ("train", "dev")


def custom_task(is_regression: bool, labels: Sequence[str], max_seq_length: int, is_pair: bool,
                train_size: int = 0, dev_size: int = 0) -> Task:
    """A user's own data as a Task: accuracy for classes, pearson and spearmanr for numbers.

    Its sparsity is counted at ``max_seq_length``, and it has no training preset.
    """
    metrics = ("pearson", "spearmanr") if is_regression else ("accuracy",)
    columns = ("sentence", "sentence2", "label") if is_pair else ("sentence", "label")
    return Task(
        name=CUSTOM_TASK, glue_dir="", train_file="", dev_file="", has_header=True,
        columns=columns, train_columns=columns, text_a="sentence", text_b="sentence2" if is_pair else None,
        label_column="label", label_encoding="float" if is_regression else "index", labels=tuple(labels),
        num_labels=1 if is_regression else len(labels), metric=metrics[0], metrics=metrics,
        task_length=max_seq_length, hub_path="", hub_config="", hub_text_a="", hub_text_b=None, hub_dev_split="",
        train_size=train_size, dev_size=dev_size, preset=None,
    )


@dataclasses.dataclass(frozen=True)
class TaskData:
    """One task's examples and what scoring them needs: a GLUE task, or a user's file as a Task."""

    task: Task
    train: List[Example]  # empty when only the dev set was asked for
    dev: List[Example]
    source: str  # where the dev examples came from, as eval records name it

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def is_custom(self) -> bool:
        return self.task.name == CUSTOM_TASK

    @property
    def num_labels(self) -> int:
        return self.task.num_labels

    @property
    def is_regression(self) -> bool:
        return self.task.is_regression

    @property
    def task_length(self) -> int:
        """The length the sequence sparsity is counted at."""
        return self.task.task_length

    @property
    def metric(self) -> str:
        return self.task.metric


def load_task_data(
    task: Optional[TaskLike] = None,
    data_dir: Optional[Union[str, Path]] = None,
    train_file: Optional[Union[str, Path]] = None,
    validation_file: Optional[Union[str, Path]] = None,
    *,
    max_seq_length: int,
    splits: Sequence[str] = SPLITS,
) -> TaskData:
    """GLUE's ``task`` from its folder under ``data_dir`` (else the hub copy), or the user's own files.

    ``splits`` is ``("train", "dev")`` for training or ``("dev",)`` for scoring only; a user's
    dev set is then ``validation_file`` alone, and for training its labels are numbered by the
    train file's label list.
    """
    if tuple(splits) not in (SPLITS, ("dev",)):
        raise ValueError(f"splits must be ('train', 'dev') or ('dev',), not {tuple(splits)}")
    with_train = "train" in splits
    files = "both --train-file and --validation-file" if with_train else "--validation-file"
    if task and (train_file or validation_file):
        raise UserError(f"Give either --task (GLUE) or {files} (your own data), not both.")
    if task:
        data = _glue_data(_task(task), data_dir, with_train)
    elif validation_file and (train_file or not with_train):
        data = _custom_data(train_file if with_train else None, validation_file, max_seq_length)
    else:
        raise UserError(f"Say which data to use: pass --task (with --data-dir), or {files}.")
    if not data.dev:
        raise UserError(f"The {data.name} dev set at {data.source} has no examples; check the file.")
    return data


def _glue_data(task: Task, data_dir: Optional[Union[str, Path]], with_train: bool) -> TaskData:
    if data_dir:
        train = load_glue_split(task, data_dir, "train") if with_train else []
        dev = load_glue_split(task, data_dir, "dev")
        source = str(glue_file(task, data_dir, "dev"))
    else:
        train = load_hub_split(task, "train") if with_train else []
        dev = load_hub_split(task, "dev")
        source = f"datasets:{task.hub_path}/{task.hub_config}/{task.hub_dev_split}"
    return TaskData(task, train, dev, source)


def _custom_data(train_file: Optional[Union[str, Path]], validation_file: Union[str, Path],
                 max_seq_length: int) -> TaskData:
    train: List[Example] = []
    if train_file is not None:
        train, train_regression, train_labels = load_custom_file(train_file)
    dev, dev_regression, dev_labels = load_custom_file(validation_file)
    if train_file is None:
        train_regression, train_labels = dev_regression, dev_labels
    elif train_regression != dev_regression:
        raise UserError(
            f"{train_file} and {validation_file} disagree on whether labels are numbers or classes; "
            "use the same kind of label in both."
        )
    elif not train_regression:
        unknown = sorted(set(dev_labels) - set(train_labels))
        if unknown:
            raise UserError(
                f"{validation_file} has labels {unknown} that {train_file} never uses; give the train file every label."
            )
        # Each file numbers its own sorted labels; renumber the dev labels by the train file's list.
        dev = [dataclasses.replace(e, label=train_labels.index(dev_labels[e.label])) for e in dev]
    is_pair = dev[0].text_b is not None
    task = custom_task(train_regression, train_labels, max_seq_length, is_pair, len(train), len(dev))
    return TaskData(task, train, dev, str(validation_file))


# --------------------------------------------------------------------------- tokenising


def check_max_seq_length(
    max_seq_length: int, config: Any, model: str, flag: Optional[str] = "--max-seq-length"
) -> None:
    """Sequences longer than the model's position table would index past it: bad input.

    ``flag`` names the setting the user can lower; None when the length is fixed (bench's task length).
    """
    limit = int(config.max_position_embeddings)
    if getattr(config, "model_type", None) in ("roberta", "xlm-roberta", "camembert"):
        limit -= int(config.pad_token_id or 0) + 1  # their positions start after the padding index
    if max_seq_length > limit:
        what = f"{flag} {max_seq_length}" if flag else f"The sequence length {max_seq_length}"
        fix = f"give {flag} {limit} or less" if flag else f"use a model with at least {max_seq_length} positions"
        raise UserError(f"{what} is longer than the {limit} positions {model} has; {fix}.")


def check_token_ids(encoded: Dict[str, Any], config: Any, tokenizer_source: Any) -> None:
    """A ``UserError`` when the tokenizer gave ids past the model's embeddings (or token types past its table):
    the tokenizer files do not belong to the model, or are damaged (an added special token, say)."""
    limits = (("input_ids", "vocab_size", "a vocabulary"), ("token_type_ids", "type_vocab_size", "token types"))
    for key, field, what in limits:
        size = getattr(config, field, None)
        if key in encoded and isinstance(size, int) and encoded[key].numel() and int(encoded[key].max()) >= size:
            raise UserError(
                f"The tokenizer of {tokenizer_source} gives {key} up to {int(encoded[key].max())} but the model has "
                f"{what} of {size}; use the tokenizer files saved with the model (they may be damaged)."
            )


def encode(
    examples: Sequence[Example], tokenizer: Any, max_seq_length: int, padding: str = "max_length"
) -> Dict[str, "Any"]:
    """Tokenise as HF run_glue does: pairs truncated longest-first to `max_seq_length`.

    padding "max_length" pads every row to `max_seq_length`; "longest" to the longest row.
    Returns tensors input_ids, attention_mask, token_type_ids (when the tokenizer makes
    them) and labels (long for classification, float for regression).
    """
    import torch

    if padding not in ("max_length", "longest"):
        raise ValueError(f"padding must be 'max_length' or 'longest', not {padding!r}")
    if not examples:
        raise UserError("There are no examples to encode; check that the data file holds rows.")
    pairs = [example.text_b is not None for example in examples]
    if any(pairs) and not all(pairs):
        raise ValueError("examples mix sentence pairs and single sentences")
    texts_a = [example.text_a for example in examples]
    texts_b = [example.text_b for example in examples] if pairs[0] else None
    encoded = tokenizer(
        texts_a, texts_b, padding=padding, truncation=True, max_length=max_seq_length, return_tensors="pt"
    )
    result = {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
    if any(isinstance(example.label, float) for example in examples):
        result["labels"] = torch.tensor([float(example.label) for example in examples], dtype=torch.float)
    else:
        result["labels"] = torch.tensor([int(example.label) for example in examples], dtype=torch.long)
    return result


def batches(encoded: Dict[str, Any], batch_size: int) -> Iterator[Dict[str, Any]]:
    """Consecutive slices of every tensor in `encoded`, in file order; the last may be short."""
    if batch_size < 1:
        raise UserError(f"Batch size {batch_size} must be at least 1; pass a positive --batch-size.")
    total = len(encoded["input_ids"])
    for start in range(0, total, batch_size):
        yield {key: value[start : start + batch_size] for key, value in encoded.items()}
