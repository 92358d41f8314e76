"""Task datasets: seeded JSONL splits built from packaged data, and their validating reader.

Record contract (docs/design.md): ``{"id", "prompt", "choices", "label"}``. Build with
``build_task("news", "data/tasks/news", {"train": 256}, seed=0)``; read with ``load_records(path)``.
"""

from mergeline.data.records import REQUIRED_KEYS, load_records, record_problem
from mergeline.data.tasks import (
    CONTROL_TASK,
    TASKS,
    available_tasks,
    build_all,
    build_task,
    get_task,
    task_files,
    task_splits,
)

__all__ = [
    "CONTROL_TASK",
    "REQUIRED_KEYS",
    "TASKS",
    "available_tasks",
    "build_all",
    "build_task",
    "get_task",
    "load_records",
    "record_problem",
    "task_files",
    "task_splits",
]
