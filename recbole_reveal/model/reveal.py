"""REVEAL as a mix-in: ``class <Backbone>_REVEAL(REVEAL, <Backbone>)``.

Reference:
    Yutong Li et al. "Teach Multimodal Recommendation Model to See via Personalized Visual Extraction
    and Adaptive Learning" (REVEAL), arXiv 2606.09082.

REVEAL adds nothing to the backbone's architecture or loss: a ``*_REVEAL`` model has exactly the
backbone's parameters, initialised identically for the same seed. What changes is how it is trained
and fed: the plugin gives it the :class:`~recbole_reveal.trainer.AVLTrainer` (adaptive visual learning,
switched by the ``avl`` config key) and its settings live in ``properties/model/REVEAL.yaml``.
"""

from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender


class REVEAL:
    """Marks a multimodal backbone subclass as a REVEAL variant (see the module docstring)."""

    reveal = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not issubclass(cls, MultimodalSequentialRecommender):
            raise TypeError(
                f"{cls.__name__}: REVEAL needs a MultimodalSequentialRecommender backbone "
                "(modality masking + declared vision parameters)"
            )
