"""Provenance of a registered model: the record, its assembly, rendering, locating and verifying artifacts.

Submodules are imported by name (``mergeline.lineage.record``, ``mergeline.lineage.verify``, …).
"""
