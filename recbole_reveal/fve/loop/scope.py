"""What ``fve_prompt_scope`` changes in the stages of the loop, as two strategies the stages call.

* ``item`` (:class:`ItemScope`, the paper): one prompt and embedding per item.
* ``interaction`` (:class:`InteractionScope`): also one prompt and embedding per interaction at a
  history position, from the item's prompt and that interaction's review keywords; the backbone reads
  them through ``history_vision_features`` (docs/fve.md, "Interaction scope").

Each stage asks its scope for the files it adds, the work it adds, and the config it adds to a
cycle's training run; the scope checks the trained backbone where the backbone is (in the training
process), so nothing about the model travels back through a stage's record.
"""

import logging
import os

from recbole_reveal.data.atomic import iter_atomic
from recbole_reveal.data.feature_store import feature_paths
from recbole_reveal.fve.encoding.encoder import item_requests, save_encoding
from recbole_reveal.fve.encoding.interaction_encoding import (
    cycle_requests, encode_cycle, encode_cycle_parallel, interaction_rows, merge, prompt_changes,
)
from recbole_reveal.fve.prompts.interactions import feature_set as interaction_feature_set
from recbole_reveal.fve.prompts.interactions import interaction_keywords, read_keywords, write_keywords
from recbole_reveal.fve.prompts.records import read_prompts

logger = logging.getLogger(__name__)


class ItemScope:
    """``fve_prompt_scope: item``: the stages' item-level work is all there is."""

    name = "item"

    def init_artefacts(self, ctx):
        return []

    def init(self, ctx, stop_words):
        """Extra work of the init stage; returns the fields it adds to the stage's record."""
        return {}

    def encode_artefacts(self, ctx, x):
        return []

    def encode(self, ctx, x, records, encode, metadata):
        """Encode cycle ``x``'s item prompts with ``encode(requests, parts=None)``; returns ``(item
        result, description, every result merged, fields for the stage's record)``."""
        result, description = encode(item_requests(ctx.items, records, ctx.dataset_dir))
        return result, description, result, {}

    def encode_summary(self, out):
        """The scope's part of the encode stage's log line."""
        return ""

    def train_overrides(self, ctx, x):
        """Config keys the scope adds to cycle ``x``'s training run."""
        return {}

    def check_trained(self, net, cycle):
        """Called in the training process with the trained backbone ``net``."""


class InteractionScope(ItemScope):
    """``fve_prompt_scope: interaction``: interaction keywords (init), interaction-level features (encode)
    and their feature set and field (train)."""

    name = "interaction"

    def init_artefacts(self, ctx):
        return [ctx.keywords_path]

    def init(self, ctx, stop_words):
        review_path = os.path.join(ctx.dataset_dir, f"{ctx.config['dataset']}.review")
        keywords, reviews = interaction_keywords(review_path, ctx.interactions, ctx.settings["fve_keywords_topk"],
                                                 stop_words)
        write_keywords(ctx.keywords_path, keywords)
        history = sum(it.history for it in ctx.interactions)
        logger.info("FVE interaction scope: %d interactions, %d can be history positions, %d of them with "
                    "review keywords (reviews: %s)", len(ctx.interactions), history, len(keywords), reviews)
        return {"interactions": len(ctx.interactions), "history_interactions": history,
                "with_keywords": len(keywords), "reviews": reviews}

    def encode_artefacts(self, ctx, x):
        return list(feature_paths(ctx.feature_dir, interaction_feature_set(x)))

    def encode(self, ctx, x, records, encode, metadata):
        keywords, initial = read_keywords(ctx.keywords_path), read_prompts(ctx.prompts_path(0))
        items, of_item, prompts = cycle_requests(ctx, records, initial, keywords)
        if metadata["processes"] > 1:   # one launch: every worker runs each part of its shard as a call of its own
            result, history, description = encode_cycle_parallel(encode, items, of_item)
        else:
            result, history, description = encode_cycle(encode, items, of_item)
        interactions = interaction_rows(history, result, ctx)
        save_encoding(interactions, description, ctx.feature_dir, interaction_feature_set(x),
                      dict(metadata, scope="interaction", keywords=ctx.keywords_path))
        previous = {} if x == 0 else cycle_requests(ctx, read_prompts(ctx.prompts_path(x - 1)), initial, keywords)[2]
        inter = interactions.summary()
        out = {"interaction_feature_set": interaction_feature_set(x), "interactions": len(prompts),
               "interaction_prompts_changed": prompt_changes(previous, prompts),
               "interactions_reencoded": inter["encoded"], "interaction_cache_hits": inter["cache_hits"]}
        return result, description, merge([result, history]), out

    def encode_summary(self, out):
        return (f"; interactions: {out['interaction_prompts_changed']} prompts changed, "
                f"{out['interactions_reencoded']} encoded, {out['interaction_cache_hits']} cache hits")

    def train_overrides(self, ctx, x):
        """The interaction-level feature set and its field (loaded when the ``.inter`` file has it)."""
        field = ctx.settings["fve_interaction_field"]
        out = {"vision_interaction_feature": interaction_feature_set(x), "fve_interaction_field": field}
        columns = iter_atomic(ctx.inter_path)[0]
        load_col = dict(ctx.config["load_col"] or {})
        if field in columns and load_col.get("inter") is not None and field not in load_col["inter"]:
            out["load_col"] = dict(load_col, inter=list(load_col["inter"]) + [field])
        return out

    def check_trained(self, net, cycle):
        if not getattr(net, "reads_history_vision", False):
            logger.warning("FVE cycle %d: %s never called history_vision_features, so it trained on item-level "
                           "visual features only; the interaction-level features were encoded for nothing "
                           "(add the call where the model builds its history's visual input, docs/design.md, or "
                           "set fve_prompt_scope: item)", cycle, type(net).__name__)


SCOPES = {s.name: s for s in (ItemScope, InteractionScope)}


def scope_of(settings):
    """The strategy of ``settings["fve_prompt_scope"]`` (its choices checked once, with the config)."""
    return SCOPES[settings["fve_prompt_scope"]]()
