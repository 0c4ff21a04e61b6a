"""
HM4SR_REVEAL
################################################

Reference:
    Yutong Li et al. "Teach Multimodal Recommendation Model to See via Personalized Visual Extraction
    and Adaptive Learning" (REVEAL), arXiv 2606.09082, on the HM4SR backbone (WWW 2025).
"""

from recbole_reveal.model.reveal import REVEAL
from recbole_reveal.model.sequential_recommender.hm4sr import HM4SR


class HM4SR_REVEAL(REVEAL, HM4SR):
    r"""HM4SR trained with REVEAL: same architecture and loss as :class:`HM4SR`; adaptive visual
    learning rescales the gradients of the vision parameters HM4SR declares (``vision_modules``: the
    image feature table and projection, the image stream's alignment and temporal experts, its
    LayerNorm, Transformer encoder and placeholder)."""
