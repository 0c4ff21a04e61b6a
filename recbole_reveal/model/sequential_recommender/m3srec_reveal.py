"""
M3SRec_REVEAL
################################################

Reference:
    Yutong Li et al. "Teach Multimodal Recommendation Model to See via Personalized Visual Extraction
    and Adaptive Learning" (REVEAL), arXiv 2606.09082, on the M3SRec backbone (CIKM 2023).
"""

from recbole_reveal.model.reveal import REVEAL
from recbole_reveal.model.sequential_recommender.m3srec import M3SRec


class M3SRec_REVEAL(REVEAL, M3SRec):
    r"""M3SRec trained with REVEAL: same architecture and loss as :class:`M3SRec`; adaptive visual
    learning rescales the gradients of the vision parameters M3SRec declares (``vision_modules``)."""
