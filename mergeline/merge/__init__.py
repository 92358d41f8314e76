"""The streaming merge engine: configs, the plan of inputs and slices, tokenizer merging, outputs, LoRA reading.

Submodules are imported by name (``mergeline.merge.engine``, ``mergeline.merge.config``, …); this
file imports nothing, so importing one of them does not pull in torch through the others.
"""
