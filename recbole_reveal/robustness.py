"""Test-time robustness figures of a trained model: metrics with a modality missing for a fraction of the
items, and metrics per popularity bucket of the test targets (docs/missing-modalities.md).

Both are computed from each test user's rank of their target in RecBole's own full-sort scores (history
items and padding excluded, as RecBole's evaluator does); with one target per user (leave-one-out),
``recall@K`` is ``1[rank < K]`` and ``ndcg@K`` is ``1 / log2(rank + 2)`` below K, averaged over users --
RecBole's numbers (ties aside).

* ``eval_missing_rates`` (with ``eval_missing_modalities``, ``eval_missing_scopes``, ``eval_missing_seed``):
  for each modality, scope and rate r, the items of a seeded draw (:func:`masked_draw`: a function of the
  item tokens, the modality and the seed only, so every model loses the same items, and a larger r
  masks a superset; :mod:`recbole_reveal.data.availability`) miss the modality in the history, in the candidates or both
  (``MultimodalSequentialRecommender.masked_items``: they get the model's ``missing_modality`` row).
  Result ``<modality>/<scope>/<r>``; ``.../one_modality``: the test users whose target has only one
  modality observed (the other missing from its feature set or drawn).
* ``eval_by_popularity``: result ``popularity/<bucket>`` for the test users whose target has 0, 1-4, 5-9
  or >= 10 training interactions.
"""

import numpy as np
import torch

from recbole_reveal.data.availability import POPULARITY_BUCKETS, masked_draw
from recbole_reveal.infra.collectives import is_distributed
from recbole_reveal.infra.errors import ConfigError

MODALITIES = ("text", "vision")


@torch.no_grad()
def target_ranks(trainer, eval_data):
    """``(users, targets, ranks)``: per evaluated (user, target), the number of items scored above the
    target in RecBole's full-sort scores."""
    trainer.model.eval()
    trainer.tot_item_num = eval_data._dataset.item_num
    trainer.item_tensor = eval_data._dataset.get_item_feature().to(trainer.device)
    users, targets, ranks = [], [], []
    uid_field = eval_data._dataset.uid_field
    for batched_data in eval_data:
        interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batched_data)
        scores = scores.float()
        target_scores = scores[positive_u, positive_i]
        ranks.append((scores[positive_u] > target_scores.unsqueeze(1)).sum(1).cpu())
        users.append(interaction[uid_field][positive_u.cpu()].cpu())
        targets.append(positive_i.cpu())
    return torch.cat(users).numpy(), torch.cat(targets).numpy(), torch.cat(ranks).numpy()


def rank_metrics(ranks, topk):
    """``recall@K`` / ``ndcg@K`` of one-target-per-user ranks, and ``users``."""
    ranks = np.asarray(ranks)
    out = {"users": int(len(ranks))}
    for k in topk if len(ranks) else ():       # no user: no metric (a table shows "—")
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    return out


def training_counts(train_dataset):
    """``[n_items]``: each item's number of training interactions. Sequential training data holds one row
    per interaction after a user's first (the target), the first one at position 0 of length-1 histories."""
    item_field = train_dataset.iid_field
    feat = train_dataset.inter_feat
    items = feat[item_field].numpy()
    seq_field = getattr(train_dataset, "item_id_list_field", None)
    if seq_field and seq_field in feat.columns:
        first = feat[train_dataset.item_list_length_field].numpy() == 1
        items = np.concatenate([items, feat[seq_field][:, 0].numpy()[first]])
    return np.bincount(items, minlength=train_dataset.item_num)


def popularity_results(counts, targets, ranks, topk):
    out = {}
    target_counts = counts[targets]
    for name, low, high in POPULARITY_BUCKETS:
        inside = (target_counts >= low) & (target_counts <= (np.inf if high is None else high))
        out[f"popularity/{name}"] = rank_metrics(ranks[inside], topk)
    return out


def check_settings(config, model):
    """The ``eval_missing_*`` keys against the model (ranges are config_keys' job)."""
    rates = list(config["eval_missing_rates"] or [])
    if (rates or config["eval_by_popularity"]) and is_distributed(config):
        raise ConfigError("eval_missing_rates / eval_by_popularity rank the test users in one process: run "
                          "them with nproc: 1")
    if rates and not hasattr(model, "masked_items"):
        raise ConfigError(f"eval_missing_rates={rates}: {config['model']} reads no item features to mask")
    return rates


def robustness_results(config, model, trainer, train_data, test_data):
    """{view: result} for the keys above (empty when none is set); each result has ``users``."""
    rates = check_settings(config, model)
    by_popularity = config["eval_by_popularity"]
    if not rates and not by_popularity:
        return {}
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    users, targets, ranks = target_ranks(trainer, test_data)
    out = {}
    if by_popularity:
        out.update(popularity_results(training_counts(train_data._dataset), targets, ranks, topk))
    if not rates:
        return out
    dataset = test_data._dataset
    tokens = list(dataset.field2id_token[dataset.iid_field][1:])
    seed = config["eval_missing_seed"]
    available = {m: model.feature_availability(m).cpu().numpy() for m in MODALITIES}
    for modality in config["eval_missing_modalities"]:
        other = "text" if modality == "vision" else "vision"
        for rate in rates:
            drawn = np.concatenate([[False], masked_draw(tokens, modality, rate, seed)])
            observed = available[modality] & ~drawn
            one_modality = observed[targets] != available[other][targets]
            for scope in config["eval_missing_scopes"]:
                if rate == 0:
                    masked_ranks = ranks
                else:
                    with model.masked_items(modality, torch.from_numpy(drawn), scope):
                        masked_ranks = target_ranks(trainer, test_data)[2]
                    if scope != "both" and not model.marks_history:
                        raise ConfigError(
                            f"{type(model).__name__} does not look up its history's features inside "
                            "`with self.reading_history():`, so the history and the candidates cannot be masked "
                            "apart: use eval_missing_scopes: [both] (docs/missing-modalities.md)")
                view = f"{modality}/{scope}/{rate:g}"
                out[view] = rank_metrics(masked_ranks, topk)
                out[f"{view}/one_modality"] = rank_metrics(masked_ranks[one_modality], topk)
    return out
