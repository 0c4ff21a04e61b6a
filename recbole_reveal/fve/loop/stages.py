"""The stages of the FVE loop (paper Alg. 2), each with the files it writes and reads back.

A stage has a ``name`` (``init`` or ``cycle_<x>/<kind>``), the files it leaves (``artefacts``: their
hashes go into the run record, so a resumed run trusts them only while unchanged) and ``run(ctx, run)``,
which does the work and returns its record (JSON) for ``stages.json``. Everything a later stage or a
resumed call needs is read back from those files, never from memory alone.
"""

import logging
import os

import torch

from recbole_reveal.data.dataset import check_items_covered
from recbole_reveal.data.feature_store import feature_paths
from recbole_reveal.fve.critic.critic import (
    acceptance, apply_rewrites, build_requests, check_acceptance, run_critic, write_critic_log,
)
from recbole_reveal.fve.encoding.cache.embeddings import EmbeddingCache
from recbole_reveal.fve.encoding.encoder import save_encoding
from recbole_reveal.fve.encoding.parallel import encode_data_parallel, resolve_num_processes
from recbole_reveal.fve.feedback.rankings import Rankings, compute_rankings, item_statistics, select_items
from recbole_reveal.fve.loop.run_state import read_json
from recbole_reveal.fve.prompts.keywords import keyword_cache_dir, load_stop_words
from recbole_reveal.fve.prompts.records import read_prompts, write_prompts
from recbole_reveal.fve.prompts.templates import build_initial_prompts, load_templates
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.infra.files import atomic_open, jsonable, write_json_atomic
from recbole_reveal.training import close_run_logs, fit_and_test

logger = logging.getLogger(__name__)


class Stage:
    kind = None
    cost = None                 # the stage's name in the cost report (recbole_reveal.infra.cost)

    def __init__(self, x=None):
        self.x = x

    @property
    def name(self):
        return self.kind if self.x is None else f"cycle_{self.x}/{self.kind}"

    def artefacts(self, ctx):
        raise NotImplementedError

    def run(self, ctx, run):
        raise NotImplementedError


class Init(Stage):
    """Alg. 2 line 3: the initial prompts from item metadata and review keywords (§4.3.3)."""

    kind, cost = "init", "fve_init"

    def artefacts(self, ctx):
        return [ctx.prompts_path(0)] + ctx.scope.init_artefacts(ctx)

    def run(self, ctx, run):
        s = ctx.settings
        stop_words = load_stop_words(s["fve_stopwords"])
        records = build_initial_prompts(ctx.config["dataset"], os.path.dirname(os.path.normpath(ctx.dataset_dir)),
                                        templates=load_templates(s["fve_templates"]), top_k=s["fve_keywords_topk"],
                                        reviews=s["fve_keyword_reviews"], stop_words=stop_words,
                                        keyword_cache=keyword_cache_dir(s, ctx.fve_dir))
        write_prompts(ctx.prompts_path(0), records)
        return dict({"items": len(records), "prompts": ctx.prompts_path(0)}, **ctx.scope.init(ctx, stop_words))


class Encode(Stage):
    """Step 1: e^{v_X} <- VLM(p^v, Prompt_X), through the embedding cache (only changed prompts reach the
    model), in one process or ``fve_num_processes`` workers."""

    kind, cost = "encode", "fve_encode"

    def feature_set(self):
        return f"fve/cycle_{self.x}"

    def artefacts(self, ctx):
        return list(feature_paths(ctx.feature_dir, self.feature_set())) + ctx.scope.encode_artefacts(ctx, self.x)

    def run(self, ctx, run):
        x = self.x
        records = read_prompts(ctx.prompts_path(x))
        # every item of the dataset needs a row: said before the VLM encodes anything
        check_items_covered(ctx.config, [r["item_id"] for r in records], ctx.prompts_path(x))
        changed = len(records) if x == 0 else _prompt_changes(read_prompts(ctx.prompts_path(x - 1)), records)
        processes = resolve_num_processes(ctx.settings["fve_num_processes"], ctx.settings["fve_device"])
        metadata = {"cycle": x, "prompts": ctx.prompts_path(x), "processes": processes}
        workers = os.path.join(ctx.cycle_dir(x), "encode_workers")
        cache = EmbeddingCache(ctx.cache_dir) if processes == 1 else None

        def encode(requests, parts=None):
            if processes > 1:
                return encode_data_parallel(requests, jsonable(ctx.settings), ctx.cache_dir, workers, processes, parts)
            return ctx.encoder.encode_items(requests, cache=cache), ctx.encoder.describe()

        result, description, total, scope_out = ctx.scope.encode(ctx, x, records, encode, metadata)
        out = dict({"processes": processes, "feature_set": self.feature_set()}, **scope_out)
        out["dim"] = int(description["dim"])
        save_encoding(result, description, ctx.feature_dir, self.feature_set(), metadata)
        summary = result.summary()
        work = total.work or {}
        out.update(prompts_changed=changed, items_reencoded=summary["encoded"], cache_hits=summary["cache_hits"],
                   missing_images=summary["missing_images"], work=work, vision_cache=total.vision)
        logger.info("FVE cycle %d: %d prompts changed, %d items encoded, %d cache hits, %d missing images%s; "
                    "%s language-model passes, %s vision-tower passes, %s TFLOP", x, changed, summary["encoded"],
                    summary["cache_hits"], summary["missing_images"],
                    ctx.scope.encode_summary(out),
                    work.get("lm_passes", "?"), work.get("vision_passes", "?"), work.get("tflop", "?"))
        return out


def _prompt_changes(prev, cur):
    old = {r["item_id"]: r["prompt"] for r in prev}
    return sum(1 for r in cur if old.get(r["item_id"]) != r["prompt"])


class Train(Stage):
    """Step 2: train f_MSR to convergence on cycle x's features (AVL acts inside the trainer), freshly
    initialised and seeded as ``run_recbole_reveal`` seeds it (``fve_warm_start``: from the previous
    cycle's weights), then evaluate it on the test users. Writes the best weights."""

    kind, cost = "train", "backbone"

    def model_path(self, ctx):
        return os.path.join(ctx.cycle_dir(self.x), "model.pth")

    def artefacts(self, ctx):
        return [self.model_path(ctx)]

    def overrides(self, ctx, run):
        """The cycle's features, their width (the VLM's hidden size) and a checkpoint folder of its own,
        and what the scope adds (:meth:`~recbole_reveal.fve.loop.scope.ItemScope.train_overrides`)."""
        return dict({"vision_feature": f"fve/cycle_{self.x}",
                     "vision_feature_dim": run.record(f"cycle_{self.x}/encode")["dim"],
                     "checkpoint_dir": os.path.join(ctx.cycle_dir(self.x), "checkpoints")},
                    **ctx.scope.train_overrides(ctx, self.x))

    def run(self, ctx, run):
        x = self.x
        warm_from = Train(x - 1).model_path(ctx) if ctx.settings["fve_warm_start"] and x > 0 else None
        launch = training_plan(ctx.config)
        config_dict = dict(ctx.config_dict, **self.overrides(ctx, run))
        fit = (ctx.model, ctx.dataset, ctx.config_file_list, ctx.cmd_args, self.model_path(ctx), warm_from)
        if launch is None:
            trainer, valid_data, out = fit_cycle(*fit, config_dict=config_dict, meter=ctx.meter, cycle=x,
                                                 scope=ctx.scope)
            ctx.trained[x] = (trainer, valid_data)
        else:       # --nproc=N: every process trains its share of each batch; rank 0 writes the weights
            logger.info("FVE cycle %d: training on %d processes (%s)", x, launch.nproc, launch.backend)
            out = launch.run(fit_cycle, *fit, config_dict=config_dict, cycle=x, scope=ctx.scope)
        return out

    def trained(self, ctx, run):
        """``(trainer, valid_data)`` of this cycle: from this call, or rebuilt with the saved weights."""
        if self.x in ctx.trained:
            return ctx.trained.pop(self.x)
        config, (_, valid_data, _), _, trainer = ctx.prepare_training(self.overrides(ctx, run))
        close_run_logs()
        trainer.model.load_state_dict(torch.load(self.model_path(ctx), map_location=config["device"],
                                                 weights_only=True))
        return trainer, valid_data


def training_plan(config, check_port=True):
    """How a cycle's backbone trains: ``None`` for one process, else the :class:`distributed.Plan` of
    ``--nproc=N`` on this machine. The loop itself runs once, so a torchrun launch or several machines
    (``world_size`` > ``nproc``) are refused."""
    from recbole_reveal.adaptation.launch import plan_from_config

    launch = plan_from_config(config, check_port=check_port)
    if launch is not None and (launch.launcher == "torchrun" or launch.world_size != launch.nproc):
        raise ConfigError("the FVE loop trains each cycle's backbone on the processes of this machine: use "
                          f"--nproc=N alone (got world_size={launch.world_size}, nproc={launch.nproc}"
                          f"{', under torchrun' if launch.launcher == 'torchrun' else ''}); start the loop with "
                          "python, not torchrun")
    return launch


def fit_cycle(model, dataset, config_file_list, cmd_args, model_path, warm_from=None, config_dict=None, meter=None,
              cycle=0, scope=None):
    """One cycle's backbone run, on every process of a distributed run: build it, warm-start it from
    ``warm_from`` (the previous cycle's weights), fit, test; the main process has ``scope`` check the
    trained backbone and writes the best weights to ``model_path``. Returns ``(trainer, valid_data,
    record)`` in one process, the record alone on rank 0 of
    a distributed run (None on the others)."""
    from recbole_reveal.infra.cost import CostMeter
    from recbole_reveal.infra.collectives import is_main_process
    from recbole_reveal.config import build_config
    from recbole_reveal.training import prepare_run

    config, loaders, net, trainer = prepare_run(build_config(model, dataset, config_file_list, config_dict, cmd_args))
    try:
        if warm_from:
            previous = torch.load(warm_from, map_location=config["device"], weights_only=True)
            kept = warm_start(net, previous, loaders[0]._dataset.item_features["vision"])
            logger.info("FVE cycle %d: warm start from cycle %d's backbone (re-initialised from the new "
                        "features: %s)", cycle, cycle - 1, ", ".join(kept) or "nothing")
        best_score, best_valid, test_result = fit_and_test(trainer, loaders, meter or CostMeter(), saved=True,
                                                           show_progress=config["show_progress"])
        if scope is not None and is_main_process(config):
            scope.check_trained(net, cycle)
    finally:
        close_run_logs()
    if is_main_process(config):
        with atomic_open(model_path, "wb") as f:       # a file object: same weights, same bytes
            torch.save(net.state_dict(), f)
    record = {"best_valid_score": float(best_score), "valid": jsonable(dict(best_valid)),
              "test": jsonable(dict(test_result))}
    if config["single_spec"]:
        return trainer, loaders[1], record
    return record if is_main_process(config) else None


def warm_start(model, previous_state, vision_features):
    """Load the previous cycle's weights into the freshly built ``model``, except its declared
    ``vision_feature_tables``, which keep their initialisation from this cycle's features.

    A state entry that equals this cycle's feature matrix but is not declared would silently carry the
    old features over: that is an error naming the entry.
    """
    fresh = model.state_dict()
    keep = {f"{m}.{k}" for m in model.vision_feature_tables
            for k in dict(model.named_modules())[m].state_dict()}
    for key, value in fresh.items():
        if key not in keep and value.shape == vision_features.shape and torch.equal(value.cpu(), vision_features):
            raise ConfigError(
                f"fve_warm_start: {type(model).__name__}.{key} is initialised from the visual features but is "
                "not listed in the model's vision_feature_tables; declare it there, or set fve_warm_start: False")
    state = {k: (fresh[k] if k in keep else v) for k, v in previous_state.items()}
    model.load_state_dict(state)
    return sorted(keep)


class Feedback(Stage):
    """Step 3: Result_X, the trained backbone's rankings of the validation users, their per-item
    statistics, and the items whose prompts are rewritten (``pos`` / ``neg``)."""

    kind, cost = "feedback", "fve_feedback"

    def rankings_path(self, ctx):
        return os.path.join(ctx.cycle_dir(self.x), "rankings.npz")

    def selection_path(self, ctx):
        return os.path.join(ctx.cycle_dir(self.x), "feedback.json")

    def artefacts(self, ctx):
        return [self.rankings_path(ctx), self.selection_path(ctx)]

    def run(self, ctx, run):
        s = ctx.settings
        trainer, valid_data = Train(self.x).trained(ctx, run)
        rankings = compute_rankings(trainer.model, valid_data, top_n=s["fve_exposure_k"])
        stats = item_statistics(rankings, s["fve_feedback_k"], s["fve_exposure_k"])
        selection = select_items(stats, s["fve_rewrite_fraction"])
        tokens = [str(t) for t in valid_data._dataset.field2id_token[valid_data._dataset.iid_field]]
        rankings.save(self.rankings_path(ctx), tokens)
        sel = [{"item": int(i), "item_id": tokens[i], "label": label} for i, label in selection]
        write_json_atomic(self.selection_path(ctx), {"selection": sel,
                                                     "valid_recall@k2": rankings.recall(s["fve_feedback_k"][1])},
                          sort_keys=True)
        return {"selected": len(sel), "pos": sum(r["label"] == "pos" for r in sel),
                "neg": sum(r["label"] == "neg" for r in sel)}

    def load(self, ctx):
        """``(rankings, item_tokens, selection)`` as written by :meth:`run`; ``selection`` as
        ``select_items`` returns it: ``[(internal item id, label)]``."""
        rankings, tokens = Rankings.load(self.rankings_path(ctx))
        selection = [(r["item"], r["label"]) for r in read_json(self.selection_path(ctx))["selection"]]
        return rankings, tokens, selection


class Critic(Stage):
    """Steps 4-5: Critic_X <- VLM(Prompt_X, EvalInstr, G, Result_X) and Prompt_(X+1) <- VLM(Critic_X,
    Prompt_X, p^v), in one generation per selected item; accepted rewrites replace the prompts."""

    kind, cost = "critic", "fve_critic"

    def artefacts(self, ctx):
        return [ctx.critic_path(self.x), ctx.prompts_path(self.x + 1)]

    def answers_dir(self, ctx):
        return os.path.join(ctx.cycle_dir(self.x), "critic_answers")

    def run(self, ctx, run):
        s, x = ctx.settings, self.x
        rankings, tokens, selection = Feedback(x).load(ctx)
        stats = item_statistics(rankings, s["fve_feedback_k"], s["fve_exposure_k"])
        records = read_prompts(ctx.prompts_path(x))
        requests = build_requests(selection, stats, rankings, tokens, ctx.items, records, ctx.dataset_dir,
                                  s["fve_feedback_k"])
        critic, counts = run_critic(ctx.generator, requests, load_templates(s["fve_templates"]),
                                    answers_dir=self.answers_dir(ctx))
        share = acceptance(counts)
        logger.info("FVE cycle %d critic: %d accepted, %d kept the old prompt (%d answers rejected, %d items "
                    "without a usable image)", x, counts["accepted"], counts["fallback"], share["answered"] -
                    counts["accepted"], counts["fallback: no usable image"])
        check_acceptance(share, counts, x, s["fve_acceptance_warning"], s["fve_min_acceptance"], self.answers_dir(ctx))
        write_critic_log(ctx.critic_path(x), critic)
        write_prompts(ctx.prompts_path(x + 1), apply_rewrites(records, critic, cycle=x + 1))
        return {"counts": dict(sorted(counts.items())), "acceptance": share,
                "backend": s["fve_generation_backend"]}
