"""Robustness cases: hostile files given to ``mergeline merge`` (configs and safetensors that lie).

Configs that, unchecked, read forever or expand without bound (``/dev/zero``, a FIFO, billion laughs)
run in a subprocess with a memory limit and a timeout; the rest call the CLI in this process.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.robustness.kit import (
    LAUGHS, TENSORS, Case, cli, cli_bounded, config, outcome, params, refused, safetensors_bytes, zoo,
)

ONE_LINE = "exit 2, one line"


def _config_case(name: str, write: Callable[[Path], Path], bounded: bool = False, expected: str = ONE_LINE) -> Case:
    """``merge CONFIG``, CONFIG made by ``write(folder)``; the outcome and that no output appeared."""
    def check(folder: Path) -> str:
        cfg = write(folder)
        args = ["merge", str(cfg), "--out", str(folder / "out"), "--quiet"]
        code, _, err = cli_bounded(args, cwd=folder, timeout=30) if bounded else cli(args, cwd=folder)
        return outcome(code, err) + ("" if not (folder / "out").exists() else ", output written")
    return Case("merge", name, expected, check)


def _text(content: str | bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / "merge.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path
    return write


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "merge.yaml")
    return folder / "merge.yaml"


def _model_case(name: str, damage: Callable[[Path, dict[str, Path]], object], expected: str = ONE_LINE,
                **config_extra: object) -> Case:
    """A merge of the zoo after ``damage(folder, models)`` replaced or broke fine-tune ``a``."""
    def check(folder: Path) -> str:
        models = zoo(folder)
        damage(folder, models)
        cfg = config(folder / "merge.yaml", models, **config_extra)
        code, _, err = cli(["merge", str(cfg), "--out", str(folder / "out"), "--quiet"])
        return outcome(code, err) + ("" if not (folder / "out").exists() else ", output written")
    return Case("merge", name, expected, check)


def _header_case(name: str, damage: Callable[[Path, dict[str, Path]], object]) -> Case:
    """A lying safetensors file: refused with one line naming the file (exit 0 would be a silent lie)."""
    def check(folder: Path) -> str:
        models = zoo(folder)
        damage(folder, models)
        cfg = config(folder / "merge.yaml", models)
        code, _, err = cli(["merge", str(cfg), "--out", str(folder / "out"), "--quiet"])
        written = "" if not (folder / "out").exists() else ", output written"
        return refused(code, err, "a/model.safetensors") + written
    return Case("merge", name, "exit 2, one line, names a/model.safetensors", check)


def _weights(models: dict[str, Path]) -> Path:
    return models["a"] / "model.safetensors"


def _header(entries: dict, data_len: int) -> Callable[[Path, dict[str, Path]], None]:
    """Replace fine-tune ``a``'s weights with one whose header says ``entries`` over ``data_len`` bytes."""
    def damage(folder: Path, models: dict[str, Path]) -> None:
        _weights(models).write_bytes(safetensors_bytes(entries, bytes(data_len)))
    return damage


def _raw(prefix: bytes) -> Callable[[Path, dict[str, Path]], None]:
    def damage(folder: Path, models: dict[str, Path]) -> None:
        _weights(models).write_bytes(prefix)
    return damage


def _replace_a(target: Callable[[Path], Path]) -> Callable[[Path, dict[str, Path]], None]:
    """Give the config ``target(folder)`` (a device, a pipe...) in place of fine-tune ``a``."""
    def damage(folder: Path, models: dict[str, Path]) -> None:
        models["a"] = target(folder)
    return damage


def _fifo_model(folder: Path) -> Path:
    os.mkfifo(folder / "pipe.safetensors")
    return folder / "pipe.safetensors"


def _lying(mutate: Callable[[dict, bytes], tuple[dict | bytes, bytes]]) -> Callable[[Path, dict[str, Path]], None]:
    """Rewrite fine-tune ``a``'s weights with its real tensors and a header changed by ``mutate``
    (entries, data) -> (entries or raw header bytes, data): accepted, the lie would merge silently."""
    def damage(folder: Path, models: dict[str, Path]) -> None:
        tensors = load_file(_weights(models))
        entries, data, offset = {}, b"", 0
        for name, shape in TENSORS.items():
            raw = tensors[name].numpy().tobytes()
            entries[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
            data, offset = data + raw, offset + len(raw)
        header, data = mutate(entries, data)
        _weights(models).write_bytes(safetensors_bytes(header, data))
    return damage


X, Y, LAST = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight", "lm_head.weight"


def _share(entries: dict, data: bytes) -> tuple[dict, bytes]:
    """Y points at X's bytes (same shape); Y's own bytes are cut out, the offsets after it shifted."""
    start, end = entries[Y]["data_offsets"]
    for entry in entries.values():
        if entry["data_offsets"][0] >= end:
            entry["data_offsets"] = [o - (end - start) for o in entry["data_offsets"]]
    entries[Y] = dict(entries[X])
    return entries, data[:start] + data[end:]


def _shift_last(by: int) -> Callable[[dict, bytes], tuple[dict, bytes]]:
    """The last tensor starts ``by`` bytes later (a gap) or earlier (an overlap); the data follows."""
    def mutate(entries: dict, data: bytes) -> tuple[dict, bytes]:
        entries[LAST]["data_offsets"] = [o + by for o in entries[LAST]["data_offsets"]]
        return entries, (data + bytes(by)) if by > 0 else data[:by]
    return mutate


def _entry(name: str, **change: object) -> Callable[[dict, bytes], tuple[dict, bytes]]:
    def mutate(entries: dict, data: bytes) -> tuple[dict, bytes]:
        entries[name].update(change)
        return entries, data
    return mutate


def _duplicate(entries: dict, data: bytes) -> tuple[bytes, bytes]:
    text = json.dumps(entries)
    return (text[:-1] + ", " + json.dumps({X: entries[X]})[1:]).encode(), data


def _index(weight_map: object, raw: bytes | None = None) -> Callable[[Path, dict[str, Path]], None]:
    """Give fine-tune ``a`` a shard index (``raw`` bytes, or JSON of ``weight_map``) beside its file."""
    def damage(folder: Path, models: dict[str, Path]) -> None:
        body = raw if raw is not None else json.dumps({"weight_map": weight_map}).encode()
        (models["a"] / "model.safetensors.index.json").write_bytes(body)
    return damage


def _outside_shard(folder: Path, models: dict[str, Path]) -> None:
    """An index whose shard is the *base's* file, reached with ``../``: the merge must not read it."""
    with safe_open(str(_weights(models)), "pt") as handle:
        names = list(handle.keys())
    _index(dict.fromkeys(names, "../base/model.safetensors"))(folder, models)
    _weights(models).unlink()


def _config_json(folder: Path, models: dict[str, Path]) -> None:
    (models["base"] / "config.json").write_text("{not json")


def _nan(folder: Path, models: dict[str, Path]) -> None:
    tensors = load_file(_weights(models))
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, _weights(models))


CASES: list[Case] = [
    # Configs.
    _config_case("config is not UTF-8", _text(b"merge_method: ties\nbase_model: \xff\xfe\n")),
    _config_case("config is a billion-laughs alias bomb (9 lines)", _text(LAUGHS + "merge_method: *i\n"), bounded=True),
    _config_case("config holds a recursive alias", _text("models: &m [*m]\nmerge_method: ties\n"), bounded=True),
    _config_case("config is /dev/zero", lambda f: Path("/dev/zero"), bounded=True),
    _config_case("config is a FIFO (nobody writes)", _fifo, bounded=True),
    _config_case("config is a folder", lambda f: f),
    _config_case("config nested 10,000 levels deep", _text("a: " + "[" * 10_000 + "]" * 10_000 + "\n")),
    _config_case("config is 9.5 MB of comments", _text(("#" * 99 + "\n") * 95_000)),
    _config_case("config: a 90,000-item list where a name goes (error quotes it)",
                 _text("merge_method: [" + "lol, " * 90_000 + "lol]\n")),
    _config_case("config is empty", _text("")),
    _config_case("config is a YAML list", _text("- merge_method: ties\n")),
    _config_case("config is not valid YAML", _text("merge_method: [ties\n")),
    _config_case("config does not exist", lambda f: f / "absent.yaml"),
    # Model paths that are not models.
    _model_case("fine-tune is /dev/zero", _replace_a(lambda f: Path("/dev/zero"))),
    _model_case("fine-tune is a FIFO named .safetensors", _replace_a(_fifo_model)),
    _model_case("fine-tune is a folder named .safetensors", _replace_a(lambda f: (f / "dir.safetensors").mkdir()
                                                                       or f / "dir.safetensors")),
    _model_case("fine-tune is a JSON file, not a model", _replace_a(lambda f: (f / "x.json").write_text("{}") and f / "x.json")),
    _model_case("model.safetensors is a folder", lambda f, m: (_weights(m).unlink(), _weights(m).mkdir())),
    _model_case("model.safetensors is a FIFO", lambda f, m: (_weights(m).unlink(), os.mkfifo(_weights(m)))),
    _model_case("pickle checkpoint only", lambda f, m: (_weights(m).unlink(),
                                                        (m["a"] / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01."))),
    # Safetensors headers that lie (on fine-tune a's real tensors).
    _header_case("header length 2**63", _raw(struct.pack("<Q", 2**63) + b"{}")),
    _header_case("header length 0", _raw(struct.pack("<Q", 0))),
    _header_case("header not JSON", _raw(safetensors_bytes(b"{{{{"))),
    _header_case("header not UTF-8", _raw(safetensors_bytes(b'{"\xff": 1}'))),
    _header_case("header is a JSON array", _raw(safetensors_bytes(b"[1, 2, 3]"))),
    _header_case("header nested 100,000 levels", _raw(safetensors_bytes(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"))),
    _header_case("two tensors share one byte range", _lying(_share)),
    _header_case("last tensor overlaps the one before by 8 bytes", _lying(_shift_last(-8))),
    _header_case("gap of 8 unused bytes before the last tensor", _lying(_shift_last(8))),
    _header_case("offset beyond the end of the file", _lying(_entry(LAST, data_offsets=[0, 10**6]))),
    _header_case("F16 declared over F32 bytes", _lying(_entry(X, dtype="F16"))),
    _header_case("negative dimension", _lying(_entry(X, shape=[-8, -8]))),
    _header_case("fractional dimensions 8.0", _lying(_entry(X, shape=[8.0, 8.0]))),
    _header_case("boolean dimension true", _lying(_entry("model.norm.weight", shape=[8, True]))),
    _header_case("shape 2**40 x 2**40 over 256 bytes", _lying(_entry(X, shape=[2**40, 2**40]))),
    _header_case("unknown dtype F128", _lying(_entry(X, dtype="F128"))),
    _header_case("a tensor name twice", _lying(_duplicate)),
    _header_case("__metadata__ holds a number", _lying(lambda e, d: ({"__metadata__": {"format": 1}, **e}, d))),
    _header_case("truncated weights", lambda f, m: _weights(m).write_bytes(_weights(m).read_bytes()[:-100])),
    # Shard indexes and side files.
    _model_case("index names a shard outside the folder (../)", _outside_shard),
    _model_case("index names an absolute shard path", _index({"x": "/etc/passwd"})),
    _model_case("index is not UTF-8", _index(None, raw=b'{"weight_map": {"\xff": 1}}')),
    _model_case("index weight_map is a list", _index(["model.safetensors"])),
    _model_case("base config.json is not JSON (out_dtype rewrites it)", _config_json, out_dtype="bfloat16"),
    _model_case("NaN in an input tensor", _nan),
]

REPRESENTATIVE = {
    "config is not UTF-8", "config is a billion-laughs alias bomb (9 lines)", "config nested 10,000 levels deep",
    "fine-tune is /dev/zero", "model.safetensors is a folder", "two tensors share one byte range",
    "gap of 8 unused bytes before the last tensor", "header nested 100,000 levels",
    "index names a shard outside the folder (../)", "base config.json is not JSON (out_dtype rewrites it)",
}


@pytest.mark.parametrize("case", params(CASES, REPRESENTATIVE))
def test_case(case: Case, tmp_path: Path) -> None:
    assert case.check(tmp_path) == case.expected
