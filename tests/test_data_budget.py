"""A data file over the memory bound is refused before it is read (issue 33), with its size and the bound."""

from __future__ import annotations

import pytest
from builders import write_data

from top.data import budget
from top.data.loading import load_task_data
from top.errors import UserError


def test_rows_are_lines_or_json_objects(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("sentence,label\nthe film,1\na plot,0")  # no line break after the last row
    assert budget.count_rows(csv, stop_after=100) == 3
    csv.write_text("sentence,label\nthe film,1\na plot,0\n")
    assert budget.count_rows(csv, stop_after=100) == 3
    big = tmp_path / "big.csv"
    big.write_bytes(b"the film,1\n" * 300_000)  # 3.3 MB
    assert budget.count_rows(big, stop_after=10**6) == 300_000
    assert 10 < budget.count_rows(big, stop_after=10) < 300_000  # counting stops after the block that passes it
    records = tmp_path / "a.json"
    records.write_text('[{"sentence": "the film", "label": 1}, {"sentence": "a plot", "label": 0}]')
    assert budget.count_rows(records, stop_after=100) == 2


def test_the_estimate_charges_rows_and_bytes(tmp_path):
    path = write_data(tmp_path / "train.csv", 50, seed=1)
    size, rows, need = budget.estimate(path, bound=10**9)
    assert size == path.stat().st_size and rows == "51 rows"
    assert need == 51 * budget.BYTES_PER_ROW + size * budget.BYTES_PER_BYTE
    size, rows, need = budget.estimate(path, bound=size)  # its bytes alone are over: nothing is counted
    assert rows == "" and need == size * budget.BYTES_PER_BYTE


def test_a_file_over_the_bound_is_refused_before_it_is_read(tmp_path, monkeypatch):
    train, dev = write_data(tmp_path / "train.csv", 300, seed=1), write_data(tmp_path / "dev.csv", 20, seed=2)
    monkeypatch.setenv(budget.DATA_MEMORY_ENV, "0.0003")  # 300 kB: its 31 kB and 52 of its 301 rows
    read = []
    monkeypatch.setattr("top.data.loading.load_custom_file", lambda path: read.append(path))
    with pytest.raises(UserError) as raised:
        load_task_data(train_file=train, validation_file=dev, max_seq_length=32)
    message = str(raised.value)
    assert not read
    assert f"{train} ({train.stat().st_size:,} bytes, over " in message and f"{dev} (" in message
    assert "over the 0.0003 GB bound" in message and budget.DATA_MEMORY_ENV in message


def test_a_file_under_the_bound_is_read(tmp_path, monkeypatch):
    train, dev = write_data(tmp_path / "train.csv", 40, seed=1), write_data(tmp_path / "dev.csv", 20, seed=2)
    monkeypatch.setenv(budget.DATA_MEMORY_ENV, "0.0003")
    data = load_task_data(train_file=train, validation_file=dev, max_seq_length=32)
    assert len(data.train) == 40 and len(data.dev) == 20


@pytest.mark.parametrize("value", ["lots", "0", "-1", "nan", "inf"])
def test_a_bound_that_is_no_positive_number_is_refused(monkeypatch, value):
    monkeypatch.setenv(budget.DATA_MEMORY_ENV, value)
    with pytest.raises(UserError, match=budget.DATA_MEMORY_ENV):
        budget.memory_bound()


def test_the_default_bound(monkeypatch):
    monkeypatch.delenv(budget.DATA_MEMORY_ENV, raising=False)
    assert budget.memory_bound() == int(budget.DEFAULT_BOUND_GB * 10**9)
