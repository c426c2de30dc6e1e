"""Messages a user reads: quoted library errors cut at a word, and a hub that cannot be reached is one
sentence with none of the HTTP libraries' own warning lines before it."""

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from top.errors import UserError, clip, error_detail
from top.storage import hub

ROOT = Path(__file__).resolve().parent.parent

LONG = ("An error happened while trying to locate the files on the Hub and we cannot find the appropriate "
        "snapshot folder for the specified revision on the local disk. Please check your internet connection "
        "and try again.")


def test_clip_keeps_short_text_and_cuts_long_text_at_a_word():
    assert clip("short enough", 200) == "short enough"
    for limit in range(20, len(LONG), 7):
        cut = clip(LONG, limit)
        assert len(cut) <= limit and cut.endswith("…"), (limit, cut)
        kept = cut[:-1]
        assert LONG.startswith(kept)
        assert LONG[len(kept)] in " ,.;:(", (limit, cut)  # the next character ends a word: none was split


def test_clip_of_one_long_word_still_ends_in_an_ellipsis():
    assert clip("x" * 300, 50) == "x" * 49 + "…"


def test_error_detail_quotes_the_first_line_cut_at_a_word():
    detail = error_detail(OSError(LONG + "\nsecond line"), limit=160)
    assert detail.startswith("OSError: An error happened") and detail.endswith("…")
    assert "second line" not in detail and "disk. P" not in detail
    assert error_detail(ValueError("")) == "ValueError"


@pytest.fixture
def online_empty_cache(tmp_path, monkeypatch):
    """Online as far as top can tell (no HF_HUB_OFFLINE), with an empty private cache."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


NOISY = ("urllib3.connectionpool", "huggingface_hub.utils._http", "huggingface_hub", "datasets")


def noisy_refused_download(*args, **kwargs):
    """A stand-in for ``snapshot_download`` that fails as a refused connection does, logging on the way."""
    if kwargs.get("local_files_only"):
        raise FileNotFoundError("not in the cache")
    for name in NOISY:
        logging.getLogger(name).warning("MaxRetryError(HTTPConnectionPool(host='127.0.0.1', port=9)): Retrying")
    raise ConnectionError(LONG)


def test_a_refused_download_is_one_sentence_without_the_libraries_warnings(online_empty_cache, monkeypatch,
                                                                           caplog):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", noisy_refused_download)
    levels = {name: logging.getLogger(name).level for name in NOISY}
    caplog.set_level(logging.WARNING)
    with pytest.raises(UserError) as info:
        hub.resolve_checkpoint_path("someone/some-checkpoint")
    message = str(info.value)
    assert not [r for r in caplog.records if r.name.startswith(("urllib3", "huggingface_hub", "datasets"))]
    assert {name: logging.getLogger(name).level for name in NOISY} == levels  # put back after the call
    assert "someone/some-checkpoint" in message and "network access" in message
    assert "HF_HUB_OFFLINE" not in message  # it is not set, so there is nothing to unset
    assert "…" in message and "disk. P" not in message

    with pytest.raises(UserError) as info:
        hub.resolve_model("someone/some-model", "--model")
    assert not [r for r in caplog.records if r.name.startswith(("urllib3", "huggingface_hub", "datasets"))]
    assert "--model someone/some-model" in str(info.value)

    # Outside the download the libraries log as before.
    logging.getLogger("urllib3.connectionpool").warning("after")
    assert [r.getMessage() for r in caplog.records] == ["after"]


def closed_port() -> int:
    """A local port nothing listens on (bound, then closed): a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_top_eval_with_a_hub_that_refuses_prints_one_line(tmp_path):
    """The whole command, in a fresh process, against a hub endpoint that refuses every connection."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(tmp_path / "hf_home"),
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-m", "top", "eval", "--checkpoint", "someone/some-checkpoint", "--task", "cola",
         "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path),
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    assert "someone/some-checkpoint" in lines[0] and "HF_HUB_OFFLINE" not in lines[0]
    for noise in ("MaxRetryError", "Retrying", "Traceback", "WARNING", "urllib3"):
        assert noise not in done.stderr
    assert not (tmp_path / "out").exists()
