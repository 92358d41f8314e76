"""Prefect tasks: one module per pipeline stage, each a thin wrapper around ``mergeline.stages``.

``RunHandle`` (what a task needs of the run calling it) and ``expected_output_missing`` are the
package's public names for code that calls the tasks (flows, the quality benchmark).
"""

from tasks._stage import RunHandle, expected_output_missing

__all__ = ["RunHandle", "expected_output_missing"]
