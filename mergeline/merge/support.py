"""Helpers of the merge engine (``mergeline.merge.engine``): the compute device, the reusable buffer pool, the
output buffer ring and writer thread, and the resolved config and report written beside a merged model."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mergeline.errors import MergelineError
from mergeline.merge.config import MergeConfig, same_path
from mergeline.merge.lora_reader import split_spec


def resolve_device(device: str) -> torch.device:
    """``cpu`` or ``cuda[:i]``; CUDA that is not there is a bad input, not a crash."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MergelineError(f"--device: unknown device {device!r} (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MergelineError(f"--device {device}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise MergelineError(f"--device: unsupported device {device!r} (use cpu or cuda)")
    return dev


class Buffers:
    """One reusable flat buffer per (slot, dtype), grown to the largest tensor seen.

    Memory stays at one largest tensor per slot (the base, each model, the output), as streaming needs
    anyway, and most tensors reuse pages that are already mapped.
    """

    def __init__(self, device: torch.device, pin: bool = False) -> None:
        self.device = device
        self.pin = pin  # page-locked host memory (staging for asynchronous host-to-device copies)
        self._flat: dict[tuple[object, torch.dtype], torch.Tensor] = {}

    def take(self, slot: object, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        flat = self._flat.get((slot, dtype))
        if flat is None or flat.numel() < n:
            flat = self._flat[(slot, dtype)] = torch.empty(max(n, 1), dtype=dtype, device=self.device,
                                                           pin_memory=self.pin)
        return flat[:n].view(shape)


def dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def resolve_spec(spec: str) -> str:
    """A model path made absolute; both halves of a ``model+adapter`` spec."""

    model, adapter = split_spec(spec)
    return "+".join(str(Path(part).resolve()) for part in (model, adapter) if part is not None)


def resolved_config(config: MergeConfig) -> MergeConfig:
    """The config with absolute model paths, as written beside the merged model."""
    data = config.model_dump(mode="json")
    entries = [data, *(data.get("models") or [])]
    for piece in data.get("slices") or []:
        entries += [piece, *piece["sources"]]
    for entry in entries:
        for key in ("base_model", "model"):
            if entry.get(key):
                entry[key] = resolve_spec(entry[key])
    return MergeConfig.model_validate(data)


def build_report(config: MergeConfig, engine: Any, method: Any, items: list[Any],
                 hashes: dict[str, str], copied: list[str], seconds: float) -> dict[str, Any]:
    return {
        "merge_method": config.merge_method,
        "method": method.report(),
        "base_model": resolve_spec(config.base_model) if config.base_model else None,
        "models": ([resolve_spec(config.models[i].model) for i in engine.inputs] if config.models
                   else [resolve_spec(p) for p in config.all_models() if not same_path(p, config.base_model)]),
        **({"slices": [[f"{src.model}[{src.layer_range[0]}:{src.layer_range[1]}]" for src in piece.sources]
                       for piece in config.slices],
            "ignored": [f"slices[{i}].residual_weight (mergekit 0.1.5 ignores it too)"
                        for i, piece in enumerate(config.slices) if piece.residual_weight is not None]}
           if config.slices else {}),
        "tokenizer": None if engine.vocab is None else {"source": config.tokenizer_choice(),
                                                         "vocab_size": engine.vocab.size},
        "compute_dtype": dtype_name(engine.compute),
        "out_dtype": dtype_name(engine.out_dtype) or "base",
        "device": str(engine.device),
        "tensors": {
            "total": len(items),
            "merged": sum(1 for it in items if it.floating and it.alias_of is None),
            "copied_from_base": [it.name for it in items if not it.floating],
            "vocab_cut_to_base": [it.name for it in items if it.cut],
            "tied": {it.name: it.alias_of for it in items if it.alias_of},
        },
        "copied_files": copied,
        "weight_sha256": hashes,
        "seconds": round(seconds, 3),
    }


class OutputRing:
    """A few reusable output buffers handed to the writer thread and given back once written.

    ``take`` blocks while every buffer is still being written, which bounds memory to ``size``
    buffers (each grown to the largest block asked of it). On CUDA the buffers are pinned, so the
    device-to-host copy of a result can run asynchronously.
    """

    def __init__(self, size: int = 2, pin: bool = False) -> None:
        self._free: queue.Queue[int] = queue.Queue()
        self._flat: dict[int, torch.Tensor] = {}
        self._pin = pin
        for slot in range(size):
            self._free.put(slot)

    def take(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> tuple[torch.Tensor, Callable[[], None]]:
        slot = self._free.get()
        nbytes = max(1, math.prod(shape) * dtype.itemsize)
        flat = self._flat.get(slot)
        if flat is None or flat.numel() < nbytes:
            flat = self._flat[slot] = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self._pin)
        view = flat[: math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
        return view, lambda: self._free.put(slot)


class AsyncSink:
    """The writer thread: writes tensors while the next ones are being merged (the writer's hash
    threads trail it, see ``ShardedWriter``).

    Messages keep the plan's order: ``begin(name)``, ``block(tensor, done)`` …, ``end()``. ``done`` is
    called once the block's bytes are written (or dropped after an error), to give its buffer back; an
    ``event`` (CUDA) is waited for before the bytes are read. The first error of the writer is raised
    in the caller's thread at its next message or at ``close``.
    """

    def __init__(self, writer: Any, depth: int = 16) -> None:
        self._writer = writer
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mergeline-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            kind, payload, done, event = message
            try:
                if self.error is None:
                    if event is not None:
                        event.synchronize()
                    getattr(self._writer, kind)(*payload)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self.error = exc
            finally:
                if done is not None:
                    done()

    def _put(self, kind: str, payload: tuple, done: Callable[[], None] | None = None, event: Any = None) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put((kind, payload, done, event))

    def begin(self, name: str) -> None:
        self._put("begin", (name,))

    def block(self, tensor: torch.Tensor, done: Callable[[], None] | None = None, event: Any = None) -> None:
        self._put("write", (tensor,), done, event)

    def end(self) -> None:
        self._put("end", ())

    def close(self) -> None:
        """Wait until everything is written; raise the writer's error, if any."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self.error = self.error or RuntimeError("aborted")
        self._queue.put(None)
        self._thread.join()


_ARENAS_LIMITED = False


def limit_malloc_arenas() -> None:
    """Let every thread of this process allocate from one glibc malloc arena (M_ARENA_MAX = 1).

    Pool threads make short-lived tensors (counts, tie masks, band values); with glibc's default of one
    arena per thread each arena keeps its own high-water mark, which at 0.1B parameters tripled the
    merge's anonymous memory (TIES: 0.93 GB against 0.40 GB with one arena). Allocations are a few per
    row block, so the shared arena's lock costs nothing measurable. Only future arenas are affected;
    a no-op off glibc.
    """
    global _ARENAS_LIMITED
    if _ARENAS_LIMITED:
        return
    _ARENAS_LIMITED = True
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def single_threaded_torch() -> None:
    """Pool-thread initializer: torch ops of this thread run on it alone (the pool is the parallelism).

    Intra-op threads would split every small block across cores and wait at a barrier for the slowest;
    on a shared machine that wait dominates. OpenMP's thread count is per calling thread, so this
    leaves the caller's threads alone (``run_merge`` restores torch's global setting at the end).
    """
    torch.set_num_threads(1)
