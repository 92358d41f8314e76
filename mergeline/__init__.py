"""mergeline: model editing and merging with task arithmetic.

The subpackages under ``mergeline`` are a plain library (torch in, torch out). Orchestration lives in
the top-level ``flows`` and ``tasks`` packages; nothing here imports Prefect.
"""

__version__ = "0.1.0"
