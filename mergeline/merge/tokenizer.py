"""The output tokenizer (``tokenizer_source``, ``tokenizer:``, ``chat_template``) and the embedding rows
it implies, as mergekit 0.1.5 builds them.

- ``base``: the base's tokenizer (else the first model's) without tokens at ids ≥ its config's
  ``vocab_size`` (BPE only, as mergekit); ``union``: that tokenizer plus every token of the other
  models' tokenizers (their ordinary tokens first, then their added tokens; models in config order,
  each one's tokens by id: mergekit takes them in set and hash-map order, so its ids of the added tokens
  can differ from run to run, while each token's row is the same); a model path: that model's
  tokenizer. A model whose tokenizer does not load counts as having the base's.
- Every vocabulary-indexed tensor (embeddings, LM head) of every input is re-indexed to the output
  vocabulary before the merge (:func:`permute_embeddings`): a token the input has keeps its row;
  otherwise the row is the one model that has it, else the base's if the base is an input that has
  it, else the mean of the inputs that have it, else zeros. ``pad_to_multiple_of`` pads the vocabulary
  with rows equal to the mean of the real ones. ``config.json``'s ``vocab_size`` becomes the output's.
- ``tokenizer.tokens``: tokens added to the output vocabulary if missing, each with its row's source
  (``{kind: zero}``, ``{kind: model_token, model, token | token_id}``: another row of a model, or a
  model path: that model's row of the token), used where a model lacks the token, or in every model
  with ``force: true``.
- ``chat_template``: ``auto`` (the most common template among the models' tokenizers) or Jinja text;
  mergekit's named templates (``chatml`` …) are its own files, not bundled here: one line, exit 2.
  A template with no ``tokenizer_source`` re-saves the base's tokenizer with it, as mergekit does.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergeline.assets import MODEL_LOAD_LOCK
from mergeline.merge.config import MergeConfig, ModelToken, TokenSource, ZeroToken
from mergeline.errors import MergelineError

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json",
)


def check_tokenizer_settings(config: MergeConfig) -> None:
    """What can be checked without loading a tokenizer."""
    pad = config.tokenizer.pad_to_multiple_of if config.tokenizer is not None else None
    if pad is not None and pad <= 0:
        raise MergelineError(f"tokenizer.pad_to_multiple_of: must be a positive integer (got {pad})")
    template = config.chat_template
    if template is not None and template != "auto" and (len(template) < 20 or "{" not in template):
        raise MergelineError(
            f"chat_template: {template!r} is neither 'auto' nor a Jinja template (mergekit's named templates "
            "are not bundled with mergeline: give the template text)"
        )


@dataclass
class Vocabulary:
    """The output tokenizer, its vocabulary (padded size) and each model's old id of every new id."""

    tokenizer: Any
    vocab: dict[str, int]
    size: int
    permutations: dict[Path, dict[int, int]]  # model folder (resolved) -> new id -> old id (-1: missing)
    tokens: dict[str, TokenSource] = field(default_factory=dict)  # ``tokenizer.tokens``
    original: dict[Path, dict[str, int]] = field(default_factory=dict)  # each model's own vocabulary


def _why(exc: Exception) -> str:
    """A loader failure in a few words (transformers' messages run to paragraphs)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}{'…' if len(text) > 160 else ''}"


def _load(path: str | Path) -> Any:
    with MODEL_LOAD_LOCK:  # merges run concurrently: transformers' first import is not thread-safe
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), use_fast=True, trust_remote_code=False)


def _vocab_size(path: str | Path) -> int | None:
    try:
        return int(json.loads((Path(path) / "config.json").read_text())["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stripped(path: str) -> Any:
    """The tokenizer of ``path`` without the tokens at ids ≥ its model's ``vocab_size``."""
    import tokenizers

    try:
        tok = _load(path)
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad input here
        raise MergelineError(f"{path}: cannot load its tokenizer ({_why(exc)})") from None
    size = _vocab_size(path) or len(tok.get_vocab())
    unused = {t for t, i in tok.get_vocab().items() if i >= size}
    if not unused:
        return tok
    data = json.loads(tok.backend_tokenizer.to_str())
    if data["model"]["type"] != "BPE":
        raise MergelineError(f"{path}: tokenizer has ids beyond vocab_size and is {data['model']['type']}, not BPE")
    data["added_tokens"] = [e for e in data["added_tokens"] if e["id"] < size]
    for t in unused:
        data["model"]["vocab"].pop(t, None)
    data["model"]["merges"] = [m for m in data["model"]["merges"]
                               if not set(m.split(" ") if isinstance(m, str) else m) & unused]
    tok._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(data))
    return tok


def _union(base_tok: Any, toks: dict[Path, Any]) -> Any:
    ordinary: dict[str, None] = {}
    added: dict[str, Any] = {}
    for path, tok in toks.items():
        size = _vocab_size(path) or tok.vocab_size
        specials = tok.added_tokens_decoder
        names = {info.content for info in specials.values()}
        for t, i in sorted(tok.get_vocab().items(), key=lambda item: item[1]):
            if i < size and t not in names:
                ordinary.setdefault(t, None)
        for i, info in specials.items():
            if i < size:
                added.setdefault(info.content, info)
    with tempfile.TemporaryDirectory() as tmp:  # a copy: the base's tokenizer stays as it is
        base_tok.save_pretrained(tmp)
        out = _load(tmp)
    have = base_tok.get_vocab()
    for t in ordinary:
        if t not in added and t not in have:
            out.add_tokens(t)
    for info in added.values():
        out.add_tokens(info)
    return out


def build_vocabulary(config: MergeConfig, models: list[str], base: str | None) -> Vocabulary | None:
    """The output vocabulary of ``config`` (None without ``tokenizer_source``/``tokenizer:``)."""
    source = config.tokenizer_choice()
    if source is None:
        return None
    base = base or models[0]
    base_tok = _stripped(base)
    toks = {Path(base).resolve(): base_tok}
    for path in models:
        key = Path(path).resolve()
        if key not in toks:
            try:
                toks[key] = _load(path)
            except Exception:  # noqa: BLE001 - mergekit: "assuming same as the base"
                continue
    if source == "base":
        out = base_tok
    elif source == "union":
        out = _union(base_tok, toks)
    else:
        try:
            out = _load(source)
        except Exception as exc:  # noqa: BLE001
            raise MergelineError(f"tokenizer_source {source}: cannot load its tokenizer ({_why(exc)})") from None
    tokens = dict(config.tokenizer.tokens or {}) if config.tokenizer is not None else {}
    for token in tokens:
        if token not in out.get_vocab():
            out.add_tokens(token)
    vocab = out.get_vocab()
    pad = config.tokenizer.pad_to_multiple_of if config.tokenizer is not None else None
    size = len(vocab) if not pad or len(vocab) % pad == 0 else (len(vocab) // pad + 1) * pad
    permutations = {}
    for path in models:
        key = Path(path).resolve()
        own = (toks.get(key) or base_tok).get_vocab()
        limit = _vocab_size(path) or len(own)
        permutations[key] = {i: (own[t] if t in own and own[t] < limit else -1) for t, i in vocab.items()}
    original = {key: tok.get_vocab() for key, tok in toks.items()}
    return Vocabulary(out, vocab, size, permutations, tokens, original)


def permute_embeddings(vocab: Vocabulary, tensors: list[tuple[Path, torch.Tensor]], base: Path | None,
                       name: str = "") -> list[torch.Tensor]:
    """Each input's vocabulary-indexed tensor ``name`` (rows = tokens) re-indexed to the output vocabulary."""
    models = [path for path, _ in tensors]
    rows = dict(tensors)
    perms = [vocab.permutations[m] for m in models]
    shape = tensors[0][1].shape[1:]
    dtype, device = tensors[0][1].dtype, tensors[0][1].device
    defaults: dict[int, torch.Tensor] = {}
    forced: set[int] = set()
    for token, i in vocab.vocab.items():
        chosen = vocab.tokens.get(token)
        present = [m for m, p in zip(models, perms) if p[i] >= 0]
        if chosen is not None and chosen.force:
            forced.add(i)
        elif len(present) == len(models):
            continue
        if chosen is not None:
            defaults[i] = _chosen_row(vocab, rows, token, i, chosen, name)
        elif len(present) == 1:
            defaults[i] = rows[present[0]][vocab.permutations[present[0]][i]]
        elif not present:
            defaults[i] = torch.zeros(shape, dtype=dtype, device=device)
        elif base in models and vocab.permutations[base][i] >= 0:
            defaults[i] = rows[base][vocab.permutations[base][i]]
        else:  # summed in input order, then divided: mergekit's order of operations
            mean = torch.zeros(shape, dtype=dtype, device=device)
            for m in present:
                mean = mean + rows[m][vocab.permutations[m][i]]
            defaults[i] = mean / len(present)
    out = []
    ids = list(vocab.vocab.values())
    targets = torch.tensor(ids, dtype=torch.long, device=device)
    for m, p in zip(models, perms):
        new = torch.zeros((vocab.size, *shape), dtype=dtype, device=device)
        sources = torch.tensor([-1 if i in forced else p[i] for i in ids], dtype=torch.long, device=device)
        have = sources >= 0
        new[targets[have]] = rows[m][sources[have]]  # one gather, not a copy per token (150k-token vocabularies)
        for i, row in defaults.items():
            if p[i] < 0 or i in forced:
                new[i] = row
        if vocab.size > len(vocab.vocab):
            new[len(vocab.vocab):] = torch.mean(new[: len(vocab.vocab)], dim=0)
        out.append(new)
    return out


def _chosen_row(vocab: Vocabulary, rows: dict[Path, torch.Tensor], token: str, i: int, chosen: TokenSource,
                name: str) -> torch.Tensor:
    """The row ``tokenizer.tokens[token]`` names: zeros, another token's row, or the token's row in a model."""
    where = f"tokenizer.tokens[{token!r}]"
    if isinstance(chosen.source, ZeroToken):
        first = next(iter(rows.values()))
        return first.new_zeros(first.shape[1:])
    model = Path(chosen.source.model if isinstance(chosen.source, ModelToken) else chosen.source).resolve()
    if model not in rows:
        raise MergelineError(f"{where}: takes its row from {model}, which is not an input of tensor {name!r}")
    if isinstance(chosen.source, ModelToken):
        index = chosen.source.token_id
        if index is None:
            index = vocab.original.get(model, {}).get(chosen.source.token or "", -1)
            if index < 0:
                raise MergelineError(f"{where}: token {chosen.source.token!r} is not in {model}'s tokenizer")
        if not 0 <= index < rows[model].shape[0]:
            raise MergelineError(f"{where}: token_id {index} is outside {model}'s {rows[model].shape[0]} rows")
        return rows[model][index]
    if vocab.permutations[model][i] < 0:
        raise MergelineError(f"{where}: {model} has no token {token!r}")
    return rows[model][vocab.permutations[model][i]]


def output_tokenizer(config: MergeConfig, donor: Path | None, vocab: Vocabulary | None) -> Any:
    """The tokenizer to save (None: the donor's tokenizer files are copied as they are)."""
    if vocab is None and config.chat_template is None:
        return None
    tok = vocab.tokenizer if vocab is not None else None
    if tok is None:
        if donor is None:
            return None
        try:
            tok = _load(donor)
        except Exception as exc:  # noqa: BLE001
            raise MergelineError(f"{donor}: cannot load its tokenizer to set chat_template ({_why(exc)})") from None
    template = config.chat_template
    if template == "auto":
        found = []
        for path in config.all_models():
            try:
                text = _load(path).chat_template
            except Exception:  # noqa: BLE001 - a model without a tokenizer has no template
                continue
            text = text.get("default") if isinstance(text, dict) else text
            if text:
                found.append(text.strip())
        template = Counter(found).most_common(1)[0][0] if found else None
    if template:
        tok.chat_template = template
    return tok
