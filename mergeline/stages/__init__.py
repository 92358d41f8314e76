"""Pipeline stages as plain functions: what Prefect tasks wrap and what ``mergeline stage`` runs.

Each stage reads its inputs from the experiment work folder, writes its output atomically, and
returns a JSON-serialisable record (paths + sha256 + figures). Records of upstream stages are the
inputs of downstream ones, so a cache keyed on a stage's inputs is keyed on content.
"""
