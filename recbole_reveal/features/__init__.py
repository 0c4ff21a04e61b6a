"""Frozen pretrained item encoders and the feature-extraction command
(``python -m recbole_reveal.features.extract``)."""

from recbole_reveal.features.encoders import (
    ENCODERS,
    Encoder,
    EncoderUnavailable,
    build_encoder,
    register_encoder,
)

__all__ = ["ENCODERS", "Encoder", "EncoderUnavailable", "build_encoder", "register_encoder"]
