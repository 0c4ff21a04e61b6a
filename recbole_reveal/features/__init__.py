"""Frozen pretrained item encoders and the feature extraction (its command:
``python -m recbole_reveal.commands.extract_features``)."""

from recbole_reveal.features.encoders import (
    ENCODERS,
    Encoder,
    build_encoder,
    register_encoder,
)

__all__ = ["ENCODERS", "Encoder", "build_encoder", "register_encoder"]
