"""Streaming safetensors I/O, atomic outputs and content hashing."""
