"""Prefect tasks: one module per pipeline stage, each a thin wrapper around ``mergeline.stages``."""
