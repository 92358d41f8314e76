"""``dvc.yaml`` as the stage table implies it (printed by ``mergeline dvc-yaml``).

Per stage: ``cmd`` runs it (``mergeline stage NAME``, the Prefect flow up to that stage); ``deps``
are the outputs of the stages it needs, the modules of its steps and the library code it runs;
``params`` every section its steps read plus those its plan reads (DVC reruns the stage when any of
them changes, as Prefect's cache keys change with the sections a call reads); ``outs`` what it
writes, with ``{work_dir}`` and ``{data_dir}`` taken from the params file.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import yaml

from mergeline.params import ExperimentParams
from mergeline.pipeline.steps import Out, Stage
from mergeline.pipeline.table import STAGES, stage

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding mergeline/

HEADER = """\
# Generated from the stage table (mergeline/pipeline/table.py) by `mergeline dvc-yaml > dvc.yaml`;
# edit the table, not this file (a test fails when the two differ). Each stage runs `mergeline stage
# NAME`, which runs the Prefect flow up to that stage (earlier stages are cache hits).
# params.yaml -> params/default.yaml.
#   dvc repro                          reproduce the experiment
#   dvc exp run -S merge.lambda=0.5    a one-line experiment
#   dvc push / dvc pull                data, base, checkpoints, vectors, importance to/from the remote
# Your own task data files (tasks: entries with data:) must be deps of prepare-data, and given
# checkpoint/adapter folders deps of fine-tune: add each, or a folder that holds them, below
# (`mergeline stage` exits 2 naming any that is missing).
# The merge stage's out is merged.json (each variant's config and weight sha256): the variant folders
# under {work_dir}/merged/ are a cache of it, pruned once scored except the registered ones (the
# registry holds those) and rebuilt bit for bit when a later stage needs one.
# Outputs persist (DVC does not delete them before a stage runs): every stage writes each of its
# folders atomically, and a Prefect cache hit then costs nothing, e.g. `dvc repro` after `mergeline run`
# (without it, each stage recomputed what the run had already made).
"""


class _Flow(list):  # type: ignore[type-arg]
    """A list YAML writes on one line (``[a, b]``)."""


class _FlowMap(dict):  # type: ignore[type-arg]
    """A mapping YAML writes on one line (``{persist: true}``)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", list(v), flow_style=True))
_Dumper.add_representer(_FlowMap, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", dict(v), flow_style=True))


def _path(out: Out, params: ExperimentParams) -> str:
    return out.path.format(work_dir=params.work_dir, data_dir=params.data_dir)


def _code(s: Stage) -> list[str]:
    """Its steps' own modules, then the library code it declares."""
    found: list[str] = []
    for step in s.steps:
        module = Path(inspect.getfile(step.fn)).resolve().relative_to(PACKAGE_ROOT).as_posix()
        if module not in found:
            found.append(module)
    return found + [c for c in s.code if c not in found]


def dvc_params(s: Stage, written: dict[str, Any]) -> list[str]:
    """The sections the stage reads, as the params file spells them.

    DVC fails on a key the file leaves out (at its default), so a section the file does not write
    counts as its nearest written parent (``registry.keep_merged`` as ``registry``), or not at all.
    """
    found: list[str] = []
    for section in s.params:
        parts = section.split(".")
        present = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if _written(written, parts[:n])), None)
        if present is not None and present not in found:
            found.append(present)
    return [f for f in found if not any(f.startswith(f"{other}.") for other in found)]


def _written(tree: Any, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def dvc_stages(params: ExperimentParams, written: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{stage: {cmd, deps, params, outs | metrics}}`` in table order, for the params file ``written``
    (as read, before defaults) that validated to ``params``."""
    stages: dict[str, dict[str, Any]] = {}
    for s in STAGES:
        upstream = [_path(o, params) for need in s.needs for o in stage(need).outs]
        entry: dict[str, Any] = {"cmd": f"mergeline stage {s.name}",
                                 "deps": _Flow(dict.fromkeys([*upstream, *_code(s)]))}
        if dvc_params(s, written):
            entry["params"] = _Flow(dvc_params(s, written))
        outs = [o for o in s.outs if not o.metric]
        if outs:
            entry["outs"] = [{_path(o, params): _FlowMap(persist=True)} if o.persist else _path(o, params) for o in outs]
        metrics = [o for o in s.outs if o.metric]
        if metrics:
            entry["metrics"] = [{_path(o, params): _FlowMap(cache=False)} for o in metrics]
        stages[s.name] = entry
    return stages


def dvc_yaml(params: ExperimentParams, written: dict[str, Any]) -> str:
    """The text of ``dvc.yaml``: :data:`HEADER`, then the stages."""
    body = yaml.dump({"stages": dvc_stages(params, written)}, Dumper=_Dumper, sort_keys=False, width=110,
                     allow_unicode=True)
    return HEADER.format(work_dir=params.work_dir) + body


__all__ = ["HEADER", "dvc_params", "dvc_stages", "dvc_yaml"]
