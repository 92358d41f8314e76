"""Task records -> token batches, and the answer-only loss shared by fine-tuning and importance.

A record is ``{"id", "prompt", "choices", "label"}`` (docs/design.md). The training text is
``prompt + delimiter + choices[label]``; only the answer tokens carry a label, every prompt and
padding position is ``-100``. Splitting follows lm-eval's convention: tokenize the whole text and the
prompt, and call the tokens after the prompt's the answer, so training sees the same tokenization
that ``multiple_choice`` evaluation scores. The delimiter must match the task YAML's
``target_delimiter``: the default ``""`` follows docs/design.md (``prompt + choices[label]``, the
choices carry their own leading space), so the YAML must set ``target_delimiter: ""``.

Padding is on the right and no attention mask is passed to the model: with causal attention, a
position never attends to the padding after it, so the logits of real tokens are the same as
without padding. That keeps the forward pass a pure function of ``input_ids`` (vmap-friendly).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergeline.data.records import answer_text
from mergeline.errors import MergelineError

IGNORE = -100


def read_records(path: str | os.PathLike[str], limit: int | None = None) -> list[dict[str, Any]]:
    """Read and validate a task JSONL file (at most ``limit`` records, in file order)."""
    path = Path(path)
    if not path.is_file():
        raise MergelineError(f"{path}: task data file not found")
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MergelineError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            _check_record(rec, f"{path}:{lineno}")
            records.append(rec)
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise MergelineError(f"{path}: no records")
    return records


def _check_record(rec: Any, where: str) -> None:
    if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
        raise MergelineError(f"{where}: record needs a string 'prompt'")
    if "target" in rec and "choices" not in rec:  # a generation record
        if not isinstance(rec["target"], str) or not rec["target"]:
            raise MergelineError(f"{where}: 'target' must be a non-empty string")
        return
    choices = rec.get("choices")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise MergelineError(f"{where}: record needs a non-empty list of string 'choices'")
    label = rec.get("label")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
        raise MergelineError(f"{where}: 'label' must be an int index into 'choices'")


@dataclass
class Encoded:
    """One tokenized (prompt, answer) pair: ``labels`` is -100 outside the answer."""

    input_ids: list[int]
    labels: list[int]


def encode(tokenizer: Any, prompt: str, answer: str, max_length: int, delimiter: str = "") -> Encoded:
    """Tokenize ``prompt + delimiter + answer``; the loss covers the answer tokens only.

    Too long: prompt tokens are dropped from the left (the answer is what is learned), then the
    answer is cut on the right if it alone exceeds ``max_length``.
    """
    context = prompt + delimiter
    # lm-eval moves trailing whitespace of the context to the continuation before splitting.
    stripped = context.rstrip()
    whole = tokenizer(context + answer, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(stripped, add_special_tokens=False)["input_ids"]
    n_ctx = len(ctx) if whole[: len(ctx)] == ctx else _common_prefix(whole, ctx)
    prompt_ids, answer_ids = whole[:n_ctx], whole[n_ctx:]
    if not answer_ids:
        raise MergelineError(f"answer {answer!r}: tokenizes to nothing after the prompt")
    answer_ids = answer_ids[:max_length]
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - (max_length - len(answer_ids))) :]
    return Encoded(prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def encode_records(
    tokenizer: Any, records: Sequence[dict[str, Any]], max_length: int, delimiter: str = ""
) -> list[Encoded]:
    """Encode each record with its answer: ``choices[label]``, or the target of a generation record."""

    return [encode(tokenizer, r["prompt"], answer_text(r), max_length, delimiter) for r in records]


def pad_id(tokenizer: Any) -> int:
    """The id used for padding (pad, else eos, else 0); its value never matters, see module doc."""
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(tid, int):
            return tid
    return 0


def collate(items: Sequence[Encoded], pad: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item (or ``length``): ``input_ids`` and ``labels``, both (B, T) long."""
    width = length or max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for row, it in enumerate(items):
        ids[row, : len(it.input_ids)] = torch.tensor(it.input_ids)
        labels[row, : len(it.labels)] = torch.tensor(it.labels)
    return {"input_ids": ids, "labels": labels}


def shuffled_batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """``steps`` batches of indices: seeded reshuffle each epoch, the last short batch is topped up
    from the next epoch so every step sees ``batch_size`` examples."""
    gen = torch.Generator().manual_seed(seed)
    pool: list[int] = []
    for _ in range(steps):
        while len(pool) < batch_size:
            pool.extend(torch.randperm(n, generator=gen).tolist())
        batch, pool = pool[:batch_size], pool[batch_size:]
        yield batch


def answer_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the labelled tokens per sequence: (B, T, V), (B, T) -> (B,).

    Position t's logits predict token t+1, hence the shift. Works for a single unbatched
    sequence too ((T, V), (T,) -> ()), as used under ``vmap``.
    """
    logits, labels = logits[..., :-1, :], labels[..., 1:]
    keep = labels != IGNORE
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * keep).sum(-1)


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over each sequence's answer tokens: (B, T, V), (B, T) -> (B,).

    The training and calibration loss is the mean of this over examples, so every example counts
    the same whatever its answer length.
    """
    count = (labels[..., 1:] != IGNORE).sum(-1).clamp_min(1)
    return -answer_logprob(logits, labels) / count


def batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the batch of :func:`answer_nll`; a scalar with grad."""
    logits = model(input_ids=batch["input_ids"]).logits
    return answer_nll(logits, batch["labels"]).mean()


@torch.no_grad()
def choice_logprobs(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    max_length: int,
    delimiter: str = "",
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """Summed log p(choice | prompt) of every choice of every record (lm-eval's ``acc`` score).

    Returns one float tensor of shape (n_choices,) per record. When every choice of a record is a
    single token after the same prompt tokens (class labels such as " sport"), one forward pass of
    that record gives all of them instead of one pass per choice.
    """
    device = next(model.parameters()).device
    seqs: list[Encoded] = []
    plan: list[tuple[int, list[int] | None]] = []  # first sequence of the record; shared-prompt choice ids
    for rec in records:
        encs = [encode(tokenizer, rec["prompt"], c, max_length, delimiter) for c in rec["choices"]]
        prefix = encs[0].input_ids[:-1]
        shared = bool(prefix) and all(
            e.input_ids[:-1] == prefix and sum(t != IGNORE for t in e.labels) == 1 for e in encs
        )
        plan.append((len(seqs), [e.input_ids[-1] for e in encs] if shared else None))
        seqs.extend(encs[:1] if shared else encs)
    shared_first = {first for first, ids in plan if ids is not None}
    rows: dict[int, torch.Tensor] = {}  # shared-prompt sequence -> next-token log-probs after the prompt
    sums: list[float] = []  # per sequence: summed answer log-prob
    pad = pad_id(tokenizer)
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        batch = collate(chunk, pad)
        logits = model(input_ids=batch["input_ids"].to(device)).logits
        sums.extend(answer_logprob(logits, batch["labels"].to(device)).tolist())
        for row, enc in enumerate(chunk):
            if start + row in shared_first:
                rows[start + row] = torch.log_softmax(logits[row, len(enc.input_ids) - 2].float(), -1).cpu()
    out: list[torch.Tensor] = []
    for (first, shared_ids), rec in zip(plan, records):
        if shared_ids is not None:
            out.append(rows[first][torch.tensor(shared_ids)])
        else:
            out.append(torch.tensor(sums[first : first + len(rec["choices"])]))
    return out
