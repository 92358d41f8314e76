"""Render a :class:`~mergeline.lineage.record.Lineage` for people (text), tools (JSON) and docs (mermaid).

The mermaid graph is a ``graph TD`` that GitHub and the MLflow artifact viewer show as a diagram:
base model -> fine-tunes (with their datasets) -> task vectors -> importance -> merge -> evaluation
-> registered version.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mergeline.lineage.record import SOURCE_PREFIX, Artifact, Lineage


def _short(sha: str | None, n: int = 12) -> str:
    return sha[:n] if sha else "none"


def _fmt(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)


def render_json(lineage: Lineage) -> str:
    return lineage.to_json()


def _artifact_line(label: str, artifact: Artifact) -> str:
    return f"{label}: {artifact.path}  sha256 {artifact.sha256}"


def render_text(lineage: Lineage, registered: str | None = None) -> str:
    """An indented provenance tree, one fact per line (``registered``: e.g. "mergeline-demo v3 @champion")."""
    out: list[str] = []
    add = out.append
    if registered:
        add(f"model {registered}")
    base = lineage.base_model
    add(f"base model: {base.id}")
    add(f"  {_artifact_line('path', base)}")
    for task in lineage.tasks:
        add(f"task {task.name}")
        for split, dataset in sorted(task.datasets.items()):
            add(f"  {_artifact_line(f'dataset {split}', dataset)}")
        if task.finetune is not None:
            ft = task.finetune
            add(f"  fine-tune: mode {ft.mode}, mlflow run {ft.run_id or 'none'}")
            for key, value in sorted(ft.params.items()):
                add(f"    param {key} = {_fmt(value)}")
            for key, value in sorted(ft.metrics.items()):
                add(f"    metric {key} = {value:g}")
            if ft.checkpoint is not None:
                add(f"    {_artifact_line('checkpoint', ft.checkpoint)}")
        if task.given is not None:
            add(f"  {_artifact_line(f'given {task.source}', task.given)}")
        if task.vector is not None:
            add(f"  {_artifact_line('task vector', task.vector)}")
        for imp in task.importance:
            add(f"  {_artifact_line(f'importance {imp.kind}', imp)}")
    merge = lineage.merge
    add(f"merge: {merge.method}" + (f", seed {merge.seed}" if merge.seed is not None else ""))
    for key, value in sorted(merge.coefficients.items()):
        add(f"  coefficient {key} = {value:g}")
    if merge.sparsity is not None:
        add(f"  sparsity = {_fmt(merge.sparsity)}")
    for task, layers in sorted((merge.per_layer or {}).items()):
        cells = ", ".join(f"{layer}:{coef:.4g}" for layer, coef in sorted(layers.items(), key=lambda kv: _layer_key(kv[0])))
        add(f"  per-layer {task}: {cells}")
    add(f"  config: {_fmt(merge.config)}")
    if lineage.evaluation:
        add("evaluation:")
        for key, value in sorted(lineage.evaluation.items()):
            add(f"  {key} = {value:.6g}")
    code = lineage.code
    add(f"code: git {code.git_commit or 'unknown'}" + (" (dirty)" if code.dirty else ""))
    add(f"dvc.lock sha256: {lineage.dvc.lock_sha256 or 'none'}")
    params = lineage.params
    add(f"params: {params.path or 'none'}  sha256 {params.sha256 or 'none'}")
    add(f"prefect flow run: {lineage.prefect.flow_run_id or 'none'}")
    ml = lineage.mlflow
    add(f"mlflow: parent run {ml.parent_run_id or 'none'}, registered from run {ml.registered_run_id or 'none'}")
    for stage, run_id in sorted(ml.stage_run_ids.items()):
        add(f"  {stage}: {run_id}")
    add("weights:")
    for name, sha in sorted(lineage.weights.items()):
        add(f"  {name}  sha256 {sha}")
    return "\n".join(out) + "\n"


def _layer_key(layer: str) -> tuple[int, str]:
    return (int(layer), "") if layer.isdigit() else (1 << 30, layer)


def _node_id(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", "_".join(parts))


def _label(*lines: str) -> str:
    # Inside a quoted mermaid label, '"' ends the label; #quot; is mermaid's entity for it.
    return '["' + "<br/>".join(line.replace('"', "#quot;") for line in lines) + '"]'


def render_mermaid(lineage: Lineage, registered: str | None = None) -> str:
    """A ``graph TD`` of the lineage; ``registered`` labels the final node (default: "registered")."""
    lines = ["graph TD"]
    node = lambda nid, *text: lines.append(f"  {nid}{_label(*text)}")  # noqa: E731
    edge = lambda a, b: lines.append(f"  {a} --> {b}")  # noqa: E731
    base = lineage.base_model
    node("base", f"base model: {base.id}", f"sha256 {_short(base.sha256)}")
    merge_inputs: list[str] = []
    eval_inputs: list[str] = []
    for task in lineage.tasks:
        upstream = "base"
        if task.finetune is not None:
            fid = _node_id("ft", task.name)
            node(fid, f"fine-tune {task.name} ({task.finetune.mode})", f"run {_short(task.finetune.run_id, 8)}")
            edge("base", fid)
            upstream = fid
        elif task.given is not None:
            gid = _node_id("given", task.name)
            node(gid, f"given {task.source} {task.name}", f"sha256 {_short(task.given.sha256)}")
            upstream = gid
        for split, dataset in sorted(task.datasets.items()):
            # Training splits (and the user files they were cut from) feed the fine-tune; held-out
            # splits feed the evaluation.
            did = _node_id("data", task.name, split)
            node(did, f"dataset {task.name}/{split}", f"sha256 {_short(dataset.sha256)}")
            if split.startswith(("train", SOURCE_PREFIX)) and task.finetune is not None:
                edge(did, upstream)
            else:
                eval_inputs.append(did)
        last = upstream
        if task.vector is not None:
            vid = _node_id("tv", task.name)
            node(vid, f"task vector {task.name}", f"sha256 {_short(task.vector.sha256)}")
            edge(upstream, vid)
            last = vid
        merge_inputs.append(last)
        for imp in task.importance:
            iid = _node_id("imp", task.name, imp.kind)
            node(iid, f"importance {task.name}/{imp.kind}", f"sha256 {_short(imp.sha256)}")
            edge(last, iid)
            merge_inputs.append(iid)
    merge = lineage.merge
    coeffs = ", ".join(f"{k}={v:g}" for k, v in sorted(merge.coefficients.items())) or "none"
    sparsity = "none" if merge.sparsity is None else _fmt(merge.sparsity)
    node("merge", f"merge: {merge.method}", f"coefficients {coeffs}"[:120], f"sparsity {sparsity}"[:120])
    edge("base", "merge")
    for source in dict.fromkeys(merge_inputs):
        edge(source, "merge")
    if lineage.params.sha256:
        node("params", f"params {lineage.params.path or ''}", f"sha256 {_short(lineage.params.sha256)}")
        edge("params", "merge")
    # Summary metrics first (means, drift): the node has room for a few lines, lineage.json has all.
    ranked = sorted(lineage.evaluation.items(), key=lambda kv: ("mean" not in kv[0] and "drift" not in kv[0], kv[0]))
    metrics = [f"{k} = {v:.4g}" for k, v in ranked[:6]]
    node("eval", "evaluation", *(metrics or ["no metrics"]))
    edge("merge", "eval")
    for source in eval_inputs:
        edge(source, "eval")
    node("registered", registered or "registered model", f"git {_short(lineage.code.git_commit, 10)}")
    edge("eval", "registered")
    return "\n".join(lines) + "\n"
