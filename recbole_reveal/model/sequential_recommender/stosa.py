"""
STOSA
################################################

Reference:
    Ziwei Fan et al. "Sequential Recommendation via Stochastic Self-Attention" in WWW 2022.

Reference code:
    https://github.com/zfan20/STOSA

Differences from the reference code (docs/models/baselines.md, docs/differences.md): the mean stream
passes through every encoder layer (the reference's layer loop assigns the new mean to a misspelt
variable; ``mean_skips_layers`` / ``reference_mode`` restore it); the BPR term is computed as
``-logsigmoid`` (the reference's ``-log(sigmoid(.))`` overflows to inf for large distance gaps);
training uses the last position of RecBole's augmented prefixes, as every RecBole sequential model does.
"""

from recbole_reveal.model.gaussian_recommender import GaussianSequentialRecommender


class STOSA(GaussianSequentialRecommender):
    r"""STOSA represents every item as a Gaussian: a mean and a diagonal covariance embedding.

    Item and position embeddings of each stream are summed, normalised and passed through a
    Wasserstein self-attention encoder; the user's next-item Gaussian is read at the last position, and
    items are ranked by the negative squared 2-Wasserstein distance to it. The loss is BPR on those
    distances to one sampled negative, plus ``pvn_weight`` times a hinge that keeps the positive item
    closer to the sequence than to the negative item. (All of it lives in
    :class:`~recbole_reveal.model.gaussian_recommender.GaussianSequentialRecommender`, shared with M3SRec.)
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # parameters initialization
        self.apply(self._init_weights)
