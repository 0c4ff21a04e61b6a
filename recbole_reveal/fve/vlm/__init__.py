"""The VLM: a local model folder (its config.json read once, its family), the families it can be, and
loading it for FVE."""
