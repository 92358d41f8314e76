"""TaLoS: task-localized sparse fine-tuning (Iurada, Ciccone, Tommasi, ICLR 2025, arXiv 2504.02620).

Sensitivity of the *pretrained* model, per parameter entry j (METHODS.md §5, the official code's NLP
path): for each calibration record x, sample one choice ŷ ~ softmax_c(log p(c | x)) from the
model's own distribution over the record's choices (R = 1), then

    s_j = Σ_x ( ∂ log p(ŷ | x) / ∂θ_j )²          (per-example gradients, squared, summed)

The mask keeps the *least* sensitive entries, chosen globally over all prunable tensors in R rounds:
round r keeps k^(r/R) of the entries (k = ``keep``), re-scoring each round with already-masked entries
scaled by 0.1 in the forward pass and set to +inf; entries at or below the round's global threshold
stay trainable. Fine-tuning then trains only the mask with :class:`MaskedAdamW`.

Prunable: every Linear weight/bias except the LM head, and every norm (``final_norm=True``, the
default, as the authors' code, which masks every LayerNorm: the final norm of a Llama, BERT's
embedding norm) or only the norms inside transformer blocks (``final_norm=False``). Embeddings, LM
head and everything else are frozen (absent from the mask).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch.func import functional_call, grad, vmap

from mergeline.errors import MergelineError
from mergeline.finetune.batching import answer_logprob, choice_logprobs, collate, encode, pad_id
from mergeline.merge.layers import layer_index

LogFn = Callable[[str, float, "int | None"], None]
ProgressFn = Callable[[str], None]


class MaskedAdamW(torch.optim.Optimizer):
    """AdamW whose update and decoupled weight decay are multiplied element-wise by a 0/1 mask.

    ``θ ← θ·(1 − m·lr·wd)``, then ``θ ← θ − m·lr·m̂/(√v̂ + ε)``; the moments m̂, v̂ see the full
    gradient (as in the TaLoS code). Entries with m = 0 are therefore bit-for-bit unchanged.
    Parameters without a mask entry are updated densely.
    """

    def __init__(
        self,
        named_params: Iterable[tuple[str, torch.nn.Parameter]],
        masks: Mapping[str, torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        named = list(named_params)
        super().__init__([p for _, p in named], {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        for name, param in named:
            mask = masks.get(name)
            self.state[param]["mask"] = None if mask is None else mask.to(device=param.device, dtype=param.dtype)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            # one multi-tensor update per (step count, masked or not): a model's ~100 tensors in a few
            # kernel launches instead of ~10 each, the same arithmetic as one tensor at a time
            buckets: dict[tuple[int, bool], list[torch.Tensor]] = {}
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "step" not in state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                buckets.setdefault((state["step"], state["mask"] is not None), []).append(param)
            for (step, masked), params in buckets.items():
                self._update(group, params, step, masked)
        return loss

    def _update(self, group: dict[str, Any], params: list[torch.Tensor], step: int, masked: bool) -> None:
        """``params`` share ``step`` and all have (``masked``) or all lack a mask."""
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        grads = [p.grad for p in params]
        m1 = [self.state[p]["exp_avg"] for p in params]
        m2 = [self.state[p]["exp_avg_sq"] for p in params]
        masks = [self.state[p]["mask"] for p in params] if masked else []
        torch._foreach_lerp_(m1, grads, 1 - beta1)
        torch._foreach_mul_(m2, beta2)
        torch._foreach_addcmul_(m2, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(m2)
        torch._foreach_div_(denom, math.sqrt(1 - beta2**step))
        torch._foreach_add_(denom, eps)
        if wd and masked:
            factor = torch._foreach_mul(masks, -lr * wd)  # 1 − lr·wd·m
            torch._foreach_add_(factor, 1.0)
            torch._foreach_mul_(params, factor)
        elif wd:
            torch._foreach_mul_(params, 1 - lr * wd)
        update = torch._foreach_mul(m1, masks) if masked else m1
        torch._foreach_addcdiv_(params, update, denom, value=-lr / (1 - beta1**step))


def prunable_names(model: torch.nn.Module, final_norm: bool = True) -> list[str]:
    """Parameter names TaLoS may train: Linear weights/biases (not the LM head) + norms (every norm, or
    with ``final_norm=False`` only those inside blocks)."""
    skip: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None:
            skip.update(id(p) for p in module.parameters())
    names: list[str] = []
    for mod_name, module in model.named_modules():
        is_norm = "norm" in type(module).__name__.lower() and (final_norm or layer_index(mod_name + ".") is not None)
        if not (isinstance(module, torch.nn.Linear) or is_norm):
            continue
        for p_name, param in module.named_parameters(recurse=False):
            if id(param) not in skip and param.is_floating_point():
                names.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    if not names:
        raise MergelineError(f"model {type(model).__name__}: no prunable (Linear or in-block norm) parameters")
    return names


def round_keep_fractions(keep: float, rounds: int) -> list[float]:
    """Fraction of prunable entries kept after each round: k^(r/R), r = 1..R."""
    if not 0 < keep <= 1:
        raise MergelineError(f"talos.keep={keep}: must be in (0, 1]")
    if rounds < 1:
        raise MergelineError(f"talos.rounds={rounds}: must be >= 1")
    return [keep ** (r / rounds) for r in range(1, rounds + 1)]


def global_mask_round(
    scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor] | None, keep_fraction: float
) -> dict[str, torch.Tensor]:
    """One pruning round: keep entries whose score is at or below the global ⌊k·N⌋-th smallest score.

    Already-masked entries score +inf, so a mask only ever shrinks. N counts all entries.
    """
    names = list(scores)
    flat = []
    for name in names:
        s = scores[name].detach().float().reshape(-1)
        if mask is not None:
            s = s.masked_fill(~mask[name].reshape(-1), math.inf)
        flat.append(s)
    every = torch.cat(flat)
    # The epsilon keeps k·N exact for fractions like 0.4·5 that float rounding puts just below an integer.
    k = min(every.numel(), max(1, int(keep_fraction * every.numel() + 1e-6)))
    threshold = torch.kthvalue(every, k).values
    del every
    out: dict[str, torch.Tensor] = {}
    for name, s in zip(names, flat):
        kept = (s <= threshold) & torch.isfinite(s)
        out[name] = kept.reshape(scores[name].shape)
    return out


def sensitivity_scores(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    names: Sequence[str],
    generator: torch.Generator,
    mask: Mapping[str, torch.Tensor] | None = None,
    masked_scale: float = 0.1,
    max_length: int = 48,
    delimiter: str = "",
    per_sample: Literal["vmap", "loop"] = "vmap",
    chunk_size: int = 4,
) -> dict[str, torch.Tensor]:
    """Σ_x (∂ log p(ŷ_x | x)/∂θ)² for the parameters ``names``, ŷ_x sampled from the model's choices.

    With ``mask``, masked-out entries are multiplied by ``masked_scale`` in every forward pass here
    (sampling and gradients), as in the TaLoS calibration. ``per_sample="vmap"`` batches the
    per-example gradients with torch.func; ``"loop"`` does one example at a time (same numbers).
    """
    params = dict(model.named_parameters())
    theta = {n: params[n].detach() for n in names}
    scale = {
        n: torch.where(mask[n].to(theta[n].device), 1.0, masked_scale).to(theta[n].dtype)
        for n in names
        if mask is not None and n in mask
    }

    def effective(th: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: th[n] * scale[n] if n in scale else th[n] for n in th}

    def logprob(th: dict[str, torch.Tensor], ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # One unbatched sequence (T,); the model wants a batch dimension.
        logits = functional_call(model, effective(th), (ids.unsqueeze(0),)).logits[0]
        return answer_logprob(logits, labels)

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    scores = {n: torch.zeros_like(t, dtype=torch.float32) for n, t in theta.items()}
    try:
        # Sampling uses the same (scaled) weights as the gradients.
        with torch.no_grad():
            originals = {n: params[n].detach().clone() for n in scale}
            for n in scale:
                params[n].mul_(scale[n])
            try:
                dist = choice_logprobs(model, tokenizer, records, max_length, delimiter)
            finally:
                for n, t in originals.items():
                    params[n].copy_(t)
        picked = [int(torch.multinomial(torch.softmax(lp, 0), 1, generator=generator)) for lp in dist]
        encoded = [encode(tokenizer, r["prompt"], r["choices"][c], max_length, delimiter) for r, c in zip(records, picked)]
        per_example = grad(logprob)
        step = chunk_size if per_sample == "vmap" else 1
        # Outer no_grad: the module's own (non-differentiated) parameters must not build a graph.
        # vmap falls back to a per-example loop for CPU flash attention and warns each call; the
        # numbers are the same, so the warning is noise.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            for start in range(0, len(encoded), step):
                batch = collate(encoded[start : start + step], pad)
                ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
                if per_sample == "vmap":
                    grads = vmap(per_example, in_dims=(None, 0, 0))(theta, ids, labels)
                    for n, g in grads.items():
                        scores[n] += g.float().pow(2).sum(0)
                else:
                    grads = per_example(theta, ids[0], labels[0])
                    for n, g in grads.items():
                        scores[n] += g.float().pow(2)
                del grads
    finally:
        model.train(was_training)
    return scores


def talos_mask(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    keep: float = 0.1,
    rounds: int = 4,
    seed: int = 0,
    max_length: int = 48,
    masked_scale: float = 0.1,
    per_sample: Literal["vmap", "loop"] = "vmap",
    chunk_size: int = 4,
    delimiter: str = "",
    log: LogFn | None = None,
    progress: ProgressFn | None = None,
    final_norm: bool = True,
) -> dict[str, torch.Tensor]:
    """TaLoS mask of the pretrained ``model`` on calibration ``records``: name -> bool (True = trainable).

    Only prunable parameters appear (:func:`prunable_names` with ``final_norm``). Logs ``talos/density``
    per round.
    """
    if not records:
        raise MergelineError("talos: no calibration records")
    # A generation record's one answer is its target: sampling "from the choices" then always picks it.
    records = [r if "choices" in r else {**r, "choices": [r["target"]], "label": 0} for r in records]
    names = prunable_names(model, final_norm)
    gen = torch.Generator().manual_seed(seed)
    mask: dict[str, torch.Tensor] | None = None
    for r, fraction in enumerate(round_keep_fractions(keep, rounds), 1):
        t0 = time.perf_counter()
        scores = sensitivity_scores(
            model, tokenizer, records, names, gen, mask, masked_scale, max_length, delimiter, per_sample, chunk_size
        )
        mask = global_mask_round(scores, mask, fraction)
        del scores
        density = mask_density(mask)
        if log:
            log("talos/density", density, r)
        if progress:
            progress(f"TaLoS round {r}/{rounds}: keep {fraction:.3f}, density {density:.4f} ({time.perf_counter() - t0:.1f}s)")
    assert mask is not None
    return mask


def mask_density(mask: Mapping[str, torch.Tensor]) -> float:
    """Fraction of True entries over all tensors of ``mask``."""
    total = sum(m.numel() for m in mask.values())
    return sum(int(m.sum()) for m in mask.values()) / max(1, total)


def mask_overlap(masks_a: Mapping[str, torch.Tensor], masks_b: Mapping[str, torch.Tensor]) -> float:
    """Jaccard overlap |A ∩ B| / |A ∪ B| of two masks over their common tensors (1.0 if both empty)."""
    common = sorted(set(masks_a) & set(masks_b))
    if not common:
        raise MergelineError("mask_overlap: the two masks share no tensor names")
    inter = union = 0
    for name in common:
        a, b = masks_a[name].bool(), masks_b[name].bool()
        if a.shape != b.shape:
            raise MergelineError(f"mask tensor {name}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        inter += int((a & b).sum())
        union += int((a | b).sum())
    return inter / union if union else 1.0
