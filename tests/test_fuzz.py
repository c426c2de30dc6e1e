"""Fuzzed checkpoints, tokenizer files, configs and data files never get a traceback, a hang or a silent wrong
answer (issues 24 and 33).

A fixed seed and a bounded count here (``TOP_FUZZ_COUNT`` trials of the largest category, 80 by
default, about 520 trials in all, run in-process through ``cli.main``), plus a few real
subprocesses under an address-space limit; ``nox -s fuzz`` (or ``tests/fuzz_report.py``) runs
more. What is mutated and how each trial is judged: ``tests/fuzzing.py``.
"""

from __future__ import annotations

import fuzzing
import pytest
from builders import single_thread

one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> fuzzing.World:
    return fuzzing.build_world(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.multiprocess
def test_fuzzed_inputs_are_refused_in_one_sentence_or_give_the_original_logits(world, capsys):
    outcomes = fuzzing.run_all(world)
    with capsys.disabled():
        print(f"\nfuzz: seed {fuzzing.SEED}, count {fuzzing.COUNT}\n" + fuzzing.table(outcomes))
    failed = [o for o in outcomes if o.verdict in fuzzing.FAILURES]
    assert not failed, "\n".join(f"{o.category} #{o.trial}: {o.verdict}, exit {o.code}: {o.error}" for o in failed[:10])
    for category in fuzzing.CATEGORIES:
        mine = [o for o in outcomes if o.category == category.name]
        assert any(o.verdict == "refused" for o in mine), category.name  # the mutations are real
    assert max(o.seconds for o in outcomes) < fuzzing.TIME_LIMIT_S


# One mutant of each kind as a real process: what reaches stderr there is what a user sees.
SUBPROCESS_TRIALS = [(0, 0), (2, 1), (4, 0), (5, 1), (6, 2), (8, 3), (9, 21), (10, 1)]  # (9, 21): a backtracking regex


@pytest.mark.multiprocess
@pytest.mark.parametrize("index,number", SUBPROCESS_TRIALS,
                         ids=[f"{fuzzing.CATEGORIES[i].name.split(',')[0].split(' (')[0]}-{n}"
                              for i, n in SUBPROCESS_TRIALS])
def test_fuzzed_input_in_a_real_process_prints_no_traceback(world, index, number):
    """No traceback, and no report of a Rust panic either."""
    outcome = fuzzing.run_trial(world, fuzzing.CATEGORIES[index], number, subprocess_run=True)
    assert outcome.verdict not in fuzzing.FAILURES, outcome
    assert outcome.verdict != "refused" or outcome.error.startswith("error: "), outcome
