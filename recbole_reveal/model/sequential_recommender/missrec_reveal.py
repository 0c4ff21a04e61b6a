"""
MISSRec_REVEAL
################################################

Reference:
    Yutong Li et al. "Teach Multimodal Recommendation Model to See via Personalized Visual Extraction
    and Adaptive Learning" (REVEAL), arXiv 2606.09082, on the MISSRec backbone (ACM MM 2023).
"""

from recbole_reveal.model.reveal import REVEAL
from recbole_reveal.model.sequential_recommender.missrec import MISSRec


class MISSRec_REVEAL(REVEAL, MISSRec):
    r"""MISSRec trained with REVEAL: same architecture, interest clustering and loss as
    :class:`MISSRec`; adaptive visual learning rescales the gradients of the vision parameters MISSRec
    declares (``vision_modules``: the image feature table and the image adaptor)."""
