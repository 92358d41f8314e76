"""Checks of the task models a user gives (``checkpoint:`` / ``adapter:`` in ``tasks:``) against the base.

Run in preflight, before any heavy work: only safetensors headers and JSON are read (the base's
shapes come from its headers, or, for a packaged or hub base, from its config on the meta device),
and folder hashes only when an adapter names another local base.

Errors (MergelineError, one line naming the task, folder and tensor):
- a missing folder or file (config.json, safetensors weights, tokenizer; adapter_config.json,
  adapter_model.safetensors), pickle-only weights;
- a checkpoint whose float tensor names or shapes differ from the base's;
- an adapter that is not a plain LoRA (DoRA, other PEFT kinds: ``mergeline.merge.lora``), whose target
  modules the base lacks or has in other shapes (another architecture or size), or whose
  ``base_model_name_or_path`` is a local model folder with other weights than the base (both hashes named);
- with ``lora.enabled``, a ``lora.target_modules`` name that is no module of the base.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mergeline.assets import MINILM, SMOLLM2, _source, ensure_offline, read_import_meta
from mergeline.errors import MergelineError
from mergeline.io.hashing import sha256_file
from mergeline.io.safetensors_io import CheckpointReader
from mergeline.merge.lora import LoraAdapter

Shapes = dict[str, tuple[int, ...]]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def weights_sha256(folder: Path) -> str:
    """One sha256 over a model folder's safetensors files (name and content): the weights' identity,
    whatever tokenizer or config files sit beside them."""

    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        digest.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def folder_shapes(folder: Path) -> Shapes:
    """Float tensors of a safetensors model folder, from the headers only."""
    reader = CheckpointReader(folder)
    return {n: tuple(reader.shape(n)) for n in reader.names() if reader.dtype(n).is_floating_point}


def config_shapes(spec: str) -> Shapes:
    """Float parameter shapes of a packaged or hub base, built from its config on the meta device
    (no weights loaded); tensors tied to another (an LM head tied to the embedding) are left out,
    as ``save_pretrained`` leaves them out of the files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    ensure_offline()
    source = _source(spec)
    try:
        if spec == SMOLLM2:
            gguf = Path(source["path"])
            config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        else:
            config = AutoConfig.from_pretrained(source["path"])
        with torch.device("meta"):
            if spec == MINILM:
                from transformers import AutoModel

                model = AutoModel.from_config(config)
            else:
                model = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # noqa: BLE001 - any failure means the base cannot be described offline
        raise MergelineError(f"base_model {spec!r}: cannot read its config offline ({type(exc).__name__})") from None
    tied = set(getattr(model, "get_expanded_tied_weights_keys", dict)() or {})
    return {n: tuple(t.shape) for n, t in model.state_dict().items() if t.is_floating_point() and n not in tied}


def _imported_base(root: Path, work_dir: str, spec: str) -> Path | None:
    """The pipeline's imported base folder, when it holds ``spec`` already."""

    folder = root / work_dir / "base"
    meta = read_import_meta(folder) if folder.is_dir() else None
    return folder if meta is not None and meta.get("id") == spec else None


def base_folder(spec: str, root: Path, work_dir: str) -> Path | None:
    """A local safetensors folder holding the base's weights, if there is one before import."""
    path = root / spec
    if path.is_dir() and any(path.glob("*.safetensors")):
        return path
    return _imported_base(root, work_dir, spec)


def check_checkpoint(task: str, folder: Path, base: Shapes, base_name: str) -> None:
    where = f"tasks: {task}: checkpoint {folder}"
    if not folder.is_dir():
        raise MergelineError(f"{where}: no such folder")
    if not (folder / "config.json").is_file():
        raise MergelineError(f"{where}: no config.json (not a Hugging Face model folder)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise MergelineError(f"{where}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); evaluation needs them")
    try:
        shapes = folder_shapes(folder)
    except MergelineError as exc:
        raise MergelineError(f"{where}: {exc}") from None
    for name in sorted(set(shapes) ^ set(base)):
        what = (f"has tensor {name!r}, which base model {base_name} does not have" if name in shapes
                else f"lacks tensor {name!r} of base model {base_name}")
        raise MergelineError(f"{where}: {what} (not fine-tuned from this base?)")
    for name in sorted(shapes):
        if shapes[name] != base[name]:
            raise MergelineError(f"{where}: tensor {name!r} has shape {list(shapes[name])}, "
                                 f"base model {base_name} has {list(base[name])}")


def _local_model_folder(root: Path, named: str) -> Path | None:
    """The model folder an adapter's ``base_model_name_or_path`` names on this machine, if it is one.
    The name comes from the adapter: one the file system cannot even look up (a component over 255
    bytes, a loop of links) is a hub id or someone else's path, not a local folder."""
    folder = root / named
    try:
        return folder if folder.is_dir() and (folder / "config.json").is_file() else None
    except OSError:
        return None


def check_adapter(task: str, folder: Path, base: Shapes, base_name: str, base_dir: Path | None, root: Path) -> None:
    try:
        adapter = LoraAdapter(folder)
    except MergelineError as exc:
        raise MergelineError(f"tasks: {task}: {exc}") from None
    try:  # shapes first: another architecture is the more useful message
        adapter.check_against(base, base_name)
    except MergelineError as exc:
        ours = f" (base model weights sha256 {weights_sha256(base_dir)[:12]})" if base_dir is not None else ""
        raise MergelineError(f"tasks: {task}: {exc}{ours}") from None
    named = adapter.base_model_name_or_path
    trained_on = _local_model_folder(root, named) if named else None
    if trained_on is not None and base_dir is not None:
        if trained_on.resolve() != base_dir.resolve():
            theirs, ours = weights_sha256(trained_on), weights_sha256(base_dir)
            if theirs != ours:
                raise MergelineError(
                    f"tasks: {task}: adapter {folder} was trained on {named} (weights sha256 {theirs[:12]}), "
                    f"not on base model {base_name} (weights sha256 {ours[:12]})")


def check_lora_targets(targets: list[str], base: Shapes, base_name: str) -> None:
    """Each of ``lora.target_modules`` names a weight of the base (PEFT's rule: the module name, or
    its last dotted parts), so a typo fails now and not in the first LoRA fine-tune."""
    for target in targets:
        if not any(n == f"{target}.weight" or n.endswith(f".{target}.weight") for n in base):
            raise MergelineError(f"lora.target_modules: {target!r} is no module of base model {base_name}")


def check_given_models(entries: list, base_spec: str, root: Path, work_dir: str,
                       lora_targets: list[str] | None = None) -> None:
    """Check every task entry with ``checkpoint:`` or ``adapter:`` (``entries``: params.task_entries),
    and ``lora_targets`` (``lora.target_modules`` when ``lora.enabled``)."""
    given = [e for e in entries if e.source != "finetune"]
    if not given and not lora_targets:
        return
    base_dir = base_folder(base_spec, root, work_dir)
    base = folder_shapes(base_dir) if base_dir is not None else config_shapes(base_spec)
    check_lora_targets(lora_targets or [], base, base_spec)
    for entry in given:
        folder = root / str(entry.checkpoint or entry.adapter)
        if entry.source == "checkpoint":
            check_checkpoint(entry.name, folder, base, base_spec)
        else:
            check_adapter(entry.name, folder, base, base_spec, base_dir, root)
