"""
VBPR
################################################

Reference:
    Ruining He and Julian McAuley. "VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback"
    in AAAI 2016.

The REVEAL paper cites the MMRec implementation (https://github.com/enoche/MMRec), which concatenates
text and visual features, has no item bias and gives E a bias; this is the VBPR paper's model (visual
features, item bias, optional visual bias). ``feature_modalities: [vision, text]`` feeds both
modalities to E, as MMRec does. See docs/models/baselines.md.
"""

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.utils import InputType
from torch import nn


class VBPR(GeneralRecommender):
    r"""VBPR adds a visual term to BPR matrix factorisation:

    .. math::
        \hat{x}_{u,i} = \langle\gamma_u, \gamma_i\rangle + \langle\theta_u, E f_i\rangle + \beta_i
        + \beta'^\top f_i

    ``f_i`` is the item's fixed feature vector (the configured ``vision_feature`` set), ``E`` a
    learned projection to ``visual_embedding_size``, ``theta_u`` the user's visual preference;
    ``beta'`` (the visual bias) is optional (``visual_bias``). The global and user biases of the paper
    cancel in every comparison of one user's items and are left out. Trained with BPR on one sampled
    negative per positive, with L2 penalties ``reg_weight`` (gamma_u, gamma_i, theta_u),
    ``bias_reg_weight`` (beta_i) and ``visual_reg_weight`` (E, beta').
    """

    input_type = InputType.PAIRWISE
    # read by recbole_reveal.utils.get_dataset_class: this model needs the MultimodalDataset hook
    uses_item_features = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.embedding_size = config["embedding_size"]
        self.visual_embedding_size = config["visual_embedding_size"]
        self.reg_weight = config["reg_weight"]
        self.bias_reg_weight = config["bias_reg_weight"]
        self.visual_reg_weight = config["visual_reg_weight"]
        negatives = config["train_neg_sample_args"]
        if negatives is None or negatives.get("sample_num", 0) != 1:
            raise ValueError(
                "VBPR trains with one sampled negative per positive: set "
                "train_neg_sample_args: {distribution: uniform, sample_num: 1}"
            )
        # fixed data, not parameters: rebuilt from the feature files, so kept out of checkpoints
        self.register_buffer("item_raw_features", self._item_features(dataset), persistent=False)
        feature_dim = self.item_raw_features.shape[1]

        # define layers
        self.user_embedding = nn.Embedding(self.n_users, self.embedding_size)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size)
        self.user_visual_embedding = nn.Embedding(self.n_users, self.visual_embedding_size)
        self.visual_projection = nn.Linear(feature_dim, self.visual_embedding_size, bias=False)
        self.item_bias = nn.Embedding(self.n_items, 1)
        self.visual_bias = nn.Linear(feature_dim, 1, bias=False) if config["visual_bias"] else None

        # parameters initialization
        self.apply(xavier_normal_initialization)
        nn.init.zeros_(self.item_bias.weight)
        if self.visual_bias is not None:
            nn.init.zeros_(self.visual_bias.weight)

    @staticmethod
    def _item_features(dataset):
        """The dataset's feature matrices, concatenated in the order of ``feature_modalities``."""
        features = getattr(dataset, "item_features", None)
        if not features:
            raise ValueError(
                "VBPR needs item features: build its dataset with recbole_reveal's create_dataset "
                "(MultimodalDataset), which reads the 'vision_feature' set"
            )
        return torch.cat(list(features.values()), dim=1)

    def item_offsets(self, items=None):
        """beta_i (+ beta'^T f_i) for ``items``, or for every item when ``items`` is None."""
        bias = self.item_bias.weight.squeeze(-1)
        if self.visual_bias is not None:
            bias = bias + self.visual_bias(self.item_raw_features).squeeze(-1)
        return bias if items is None else bias[items]

    def forward(self, user, item):
        visual = self.visual_projection(self.item_raw_features[item])
        return (
            (self.user_embedding(user) * self.item_embedding(item)).sum(-1)
            + (self.user_visual_embedding(user) * visual).sum(-1)
            + self.item_offsets(item)
        )

    def calculate_loss(self, interaction):
        user = interaction[self.USER_ID]
        pos_item, neg_item = interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        bpr = -F.logsigmoid(self.forward(user, pos_item) - self.forward(user, neg_item)).mean()

        def squared(*tensors):
            return sum(t.pow(2).sum(-1).mean() for t in tensors)

        reg = self.reg_weight * squared(
            self.user_embedding(user), self.user_visual_embedding(user),
            self.item_embedding(pos_item), self.item_embedding(neg_item),
        )
        reg = reg + self.bias_reg_weight * squared(self.item_bias(pos_item), self.item_bias(neg_item))
        if self.visual_reg_weight:
            visual_params = [self.visual_projection.weight]
            if self.visual_bias is not None:
                visual_params.append(self.visual_bias.weight)
            reg = reg + self.visual_reg_weight * sum(p.pow(2).sum() for p in visual_params)
        return bpr + reg

    def predict(self, interaction):
        return self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction):
        user = interaction[self.USER_ID]
        visual = self.visual_projection(self.item_raw_features)
        scores = (
            self.user_embedding(user) @ self.item_embedding.weight.T
            + self.user_visual_embedding(user) @ visual.T
            + self.item_offsets()
        )
        return scores.view(-1)
