"""The FVE refinement loop (paper Alg. 2): per cycle x, encode every item image under its current
prompt, train the backbone on those features, rank the validation users, and let the VLM critic
rewrite the prompts of the selected items for cycle x + 1.

Every finished stage is persisted atomically under the run folder (``fve_run_dir``, default
``<feature_dir>/fve/run``) in ``stages.json`` with a fingerprint of the config; calling
:func:`run_fve` again with the same config resumes at the first unfinished stage (a finished run
loads its saved results and runs nothing, not even the VLM load). See docs/fve.md ("The cycle loop").
"""

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager

import numpy as np
import torch

from recbole_reveal.cost import CostMeter, format_cost, write_cost
from recbole_reveal.errors import ConfigError
from recbole_reveal.files import write_json_atomic

logger = logging.getLogger(__name__)

STAGES_FILE = "stages.json"
FORMAT_VERSION = 1
# Config keys that never change a result: logging, paths of by-products, the loop's own control keys.
# ``vision_feature`` / ``vision_feature_dim`` / ``checkpoint_dir`` are set by the loop per cycle.
_IGNORED_KEYS = {
    "fve_stop_after", "fve_run_dir", "fve_cycles", "fve_preprocess_workers", "fve_vision_cache_mb",
    "fve_num_processes",
    "fve_vision_cache_dir", "fve_cache_dir", "feature_dir", "show_progress", "state", "checkpoint_dir",
    "vision_feature",
    "vision_feature_dim", "log_wandb", "wandb_project", "tensorboard", "device", "gpu_id", "use_gpu",
    "worker", "local_rank", "nproc", "world_size", "offset", "ip", "port", "backend", "single_spec",
    "save_dataset", "dataset_save_path", "save_dataloaders", "dataloaders_save_path", "log_dir",
}
STAGE_KINDS = ("encode", "train", "feedback", "critic")
# cost-report names of the stages (recbole_reveal.cost): FVE's own work as fve_*, the backbone's not
COST_STAGES = {"init": "fve_init", "encode": "fve_encode", "train": "backbone", "feedback": "fve_feedback",
               "critic": "fve_critic"}


def stage_names(n_cycles):
    """Stages of a run in order: ``init``, then ``cycle_<x>/<kind>`` (no critic after the last cycle)."""
    names = ["init"]
    for x in range(n_cycles):
        names += [f"cycle_{x}/{k}" for k in STAGE_KINDS if not (k == "critic" and x == n_cycles - 1)]
    return names


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def fingerprint_config(config, settings):
    """The result-relevant settings of a run: the RecBole config (minus :data:`_IGNORED_KEYS`) and every
    FVE setting with its default filled in. Returns ``(dict, sha256)``."""
    keys = dict(config.final_config_dict)
    keys.update(settings)
    relevant = {k: _jsonable(v) for k, v in keys.items() if k not in _IGNORED_KEYS}
    blob = json.dumps(relevant, sort_keys=True)
    return relevant, hashlib.sha256(blob.encode()).hexdigest()


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


def _atomic_json(path, obj):
    write_json_atomic(path, obj, sort_keys=True)


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class _Run:
    """State of one run folder: ``stages.json`` = {format, fingerprint, config, stages: {name: record}}."""

    def __init__(self, run_dir, relevant, fingerprint):
        self.dir = run_dir
        self.path = os.path.join(run_dir, STAGES_FILE)
        self.state = {"format": FORMAT_VERSION, "fingerprint": fingerprint, "config": relevant, "stages": {}}
        if os.path.isfile(self.path):
            saved = _read_json(self.path)
            if saved.get("format") != FORMAT_VERSION:
                raise ConfigError(f"{self.path}: run-folder format {saved.get('format')!r}, this version reads "
                                  f"{FORMAT_VERSION}; use another fve_run_dir or delete {run_dir}")
            if saved.get("fingerprint") != fingerprint and saved.get("stages"):
                old, new = saved.get("config", {}), relevant
                changed = sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))
                detail = ", ".join(f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in changed[:12])
                raise ConfigError(
                    f"FVE run folder {run_dir} holds {len(saved['stages'])} finished stages made with another "
                    f"config; changed keys: {changed} ({detail}). Restore those values to resume, or start a "
                    f"fresh run with another fve_run_dir (or delete {run_dir}).")
            self.state["stages"] = saved.get("stages", {})

    def done(self, name):
        return name in self.state["stages"]

    def record(self, name):
        return self.state["stages"][name]

    def finish(self, name, record):
        self.state["stages"][name] = record
        _atomic_json(self.path, self.state)

    def drop_from(self, names):
        """Forget ``names`` (a stage whose artefacts are gone and every stage after it)."""
        for n in names:
            self.state["stages"].pop(n, None)
        _atomic_json(self.path, self.state)


def _prompt_changes(prev, cur):
    old = {r["item_id"]: r["prompt"] for r in prev}
    return sum(1 for r in cur if old.get(r["item_id"]) != r["prompt"])


def format_table(rows, valid_metric):
    """The per-cycle table as text."""
    head = (f"{'cycle':>5} {'prompts changed':>15} {'re-encoded':>10} {'cache hits':>10} "
            f"{'valid ' + valid_metric:>16} {'test ' + valid_metric:>16}  seconds (encode/train/feedback/critic)")
    lines, key = [head], valid_metric.lower()
    for r in rows:
        s = r["seconds"]
        sec = "/".join("-" if s.get(k) is None else f"{s[k]:.1f}" for k in STAGE_KINDS)
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"{r['cycle']:>5} {r['prompts_changed']:>15} {r['items_reencoded']:>10} {r['cache_hits']:>10} "
                     f"{fmt(r['valid'].get(key)):>16} {fmt(r['test'].get(key)):>16}  {sec}")
    return "\n".join(lines)


def run_fve(model, dataset, config_file_list=None, config_dict=None, cmd_args=()):
    """Run the FVE loop (Alg. 2) for ``fve_cycles`` cycles; resumable (module docstring).

    Returns a dict: ``table`` (one row per finished cycle: ``cycle``, ``prompts_changed``,
    ``items_reencoded``, ``cache_hits``, ``missing_images``, ``critic`` counts, ``valid`` / ``test``
    results, ``seconds`` per stage), ``executed`` (the stages run by this call), ``stopped_after``
    (``fve_stop_after`` when it ended the call early, else None), ``run_dir``, ``feature_dir``,
    ``table_text``.
    """
    from recbole_reveal.config import build_config
    from recbole_reveal.fve.config import fve_settings
    from recbole_reveal.fve.critic import critic_settings
    from recbole_reveal.fve.feedback import feedback_settings

    config_dict = dict(config_dict or {})
    base = build_config(model, dataset, config_file_list, config_dict, cmd_args)
    settings = fve_settings(base)
    fs, cs = feedback_settings(base), critic_settings(base)
    if not settings["vlm_path"]:
        raise ConfigError("run_fve needs vlm_path: a local Qwen2.5-VL / Qwen3-VL folder, e.g. "
                          "`hf download Qwen/Qwen2.5-VL-7B-Instruct --local-dir /models/Qwen2.5-VL-7B-Instruct`")
    n_cycles = settings["fve_cycles"]
    names = stage_names(n_cycles)
    stop_after = settings["fve_stop_after"]
    if stop_after is not None and stop_after not in names:
        raise ConfigError(f"fve_stop_after must be one of the stages {names}; got {stop_after!r}")

    dataset_dir = base["data_path"]
    feature_dir = base["feature_dir"] or os.path.join(dataset_dir, "features")
    fve_dir = os.path.join(feature_dir, "fve")
    run_dir = settings["fve_run_dir"] or os.path.join(fve_dir, "run")
    relevant, fp = fingerprint_config(base, settings)
    run = _Run(run_dir, relevant, fp)
    meter = CostMeter()
    meter.start_memory()
    with _run_log(os.path.join(run_dir, "fve.log")):
        return _run_stages(model, dataset, config_file_list, config_dict, cmd_args, base, settings, fs, cs,
                           dataset_dir, feature_dir, fve_dir, run, names, n_cycles, stop_after, meter)


@contextmanager
def _run_log(path):
    """Append the FVE modules' INFO records (stage timings, critic counts, the table) to ``path``;
    RecBole's own log handlers are closed after each training, so the loop keeps a log of its own."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    fve_logger = logging.getLogger("recbole_reveal.fve")
    level = fve_logger.level
    fve_logger.addHandler(handler)
    fve_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        fve_logger.removeHandler(handler)
        fve_logger.setLevel(level)
        handler.close()


def _run_stages(model, dataset, config_file_list, config_dict, cmd_args, base, settings, fs, cs,
                dataset_dir, feature_dir, fve_dir, run, names, n_cycles, stop_after, meter):
    run_dir = run.dir
    loop = _Loop(model, dataset, config_file_list, config_dict, cmd_args, base, settings, fs, cs,
                 dataset_dir, feature_dir, fve_dir, run, meter)

    # A stage counts as finished only while its artefacts exist unchanged (another run sharing this
    # feature_dir may have rewritten fve/cycle_<x> or the prompts); otherwise it and all later stages rerun.
    for n, name in enumerate(names):
        if not run.done(name):
            continue
        problem = loop.artefact_problem(name, run.record(name).get("artefact_sha256"))
        if problem:
            logger.warning("FVE: stage %s is recorded as finished but %s; rerunning from it", name, problem)
            run.drop_from(names[n:])
            break

    executed, stopped = [], None
    for name in names:
        if run.done(name):
            continue
        start = time.perf_counter()
        with meter.stage(COST_STAGES["init" if name == "init" else name.split("/")[1]]):
            record = loop.run_stage(name)
        record["seconds"] = round(time.perf_counter() - start, 3)
        record["artefact_sha256"] = [_sha256(p) for p in loop.artefacts(name)]
        run.finish(name, record)
        executed.append(name)
        logger.info("FVE: stage %s finished in %.1f s", name, record["seconds"])
        if name == stop_after:
            stopped = name
            logger.info("FVE: stopping after %s (fve_stop_after); run again to resume", name)
            break
    if not executed:
        logger.info("FVE: every stage of %s is finished; nothing to run (results loaded)", run_dir)

    table = loop.table(n_cycles)
    text = format_table(table, base["valid_metric"])
    logger.info("FVE per-cycle table (%s):\n%s", run_dir, text)
    _atomic_json(os.path.join(run_dir, "table.json"), table)
    cost = meter.report(device=base["device"], model=base["model"], dataset=base["dataset"], seed=base["seed"],
                        cycles=n_cycles, executed=len(executed))
    cost_file = write_cost(os.path.join(run_dir, "cost.json"), cost)
    logger.info("%s", format_cost(cost, title=f"FVE run cost, stages run by this call (also in {cost_file})"))
    return {"table": table, "table_text": text, "executed": executed, "stopped_after": stopped,
            "run_dir": run_dir, "feature_dir": feature_dir, "cost": cost, "cost_file": cost_file}


class _Loop:
    def __init__(self, model, dataset, config_file_list, config_dict, cmd_args, base, settings, fs, cs,
                 dataset_dir, feature_dir, fve_dir, run, meter):
        self.meter = meter
        self.model, self.dataset, self.files, self.config_dict, self.cmd_args = (
            model, dataset, config_file_list, config_dict, cmd_args)
        self.base, self.settings, self.fs, self.cs = base, settings, fs, cs
        self.dataset_dir, self.feature_dir, self.fve_dir, self.run = dataset_dir, feature_dir, fve_dir, run
        self._encoder = None
        self._items = None
        self._trained = {}          # cycle -> (trainer, valid_data) from this call (saves a rebuild)

    # ---- paths -------------------------------------------------------------------------------
    def prompts_path(self, x):
        return os.path.join(self.fve_dir, f"prompts_cycle_{x}.jsonl")

    def critic_path(self, x):
        return os.path.join(self.fve_dir, f"critic_cycle_{x}.jsonl")

    def cycle_dir(self, x):
        return os.path.join(self.run.dir, f"cycle_{x}")

    def model_path(self, x):
        return os.path.join(self.cycle_dir(x), "model.pth")

    def rankings_path(self, x):
        return os.path.join(self.cycle_dir(x), "rankings.npz")

    def artefacts(self, name):
        from recbole_reveal.data.feature_store import feature_paths

        if name == "init":
            return [self.prompts_path(0)]
        cycle, kind = name.split("/")
        x = int(cycle.split("_")[1])
        return {"encode": list(feature_paths(self.feature_dir, f"fve/cycle_{x}")),
                "train": [self.model_path(x)],
                "feedback": [self.rankings_path(x), os.path.join(self.cycle_dir(x), "feedback.json")],
                "critic": [self.critic_path(x), self.prompts_path(x + 1)]}[kind]

    def artefact_problem(self, name, digests):
        """Why stage ``name``'s saved files cannot be trusted (None when they can): a file is gone, or
        differs from the one the stage wrote (``digests``; records of older runs have none)."""
        paths = self.artefacts(name)
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            return f"its files are gone ({', '.join(missing)})"
        if digests is not None:
            changed = [p for p, d in zip(paths, digests) if _sha256(p) != d]
            if changed:
                return (f"{', '.join(changed)} changed since it wrote them (another FVE run with the same "
                        "feature_dir? give each run its own feature_dir and fve_run_dir)")
        return None

    # ---- shared resources --------------------------------------------------------------------
    @property
    def items(self):
        from recbole_reveal.fve.prompts import read_items

        if self._items is None:
            self._items = read_items(os.path.join(self.dataset_dir, f"{self.base['dataset']}.item"))
        return self._items

    @property
    def encoder(self):
        """The VLM is loaded once per call, on first use (never for a finished run)."""
        from recbole_reveal.fve.config import build_fve_encoder

        if self._encoder is None:
            self._encoder = build_fve_encoder(self.settings)
        return self._encoder

    def train_overrides(self, x):
        enc = self.run.record(f"cycle_{x}/encode")
        return dict(self.config_dict, vision_feature=f"fve/cycle_{x}", vision_feature_dim=enc["dim"],
                    checkpoint_dir=os.path.join(self.cycle_dir(x), "checkpoints"))

    def prepare(self, x):
        from recbole_reveal.training import prepare_run

        return prepare_run(self.model, self.dataset, self.files, self.train_overrides(x), self.cmd_args)

    # ---- stages ------------------------------------------------------------------------------
    def run_stage(self, name):
        if name == "init":
            return self.stage_init()
        cycle, kind = name.split("/")
        return getattr(self, f"stage_{kind}")(int(cycle.split("_")[1]))

    def stage_init(self):
        from recbole_reveal.fve.prompts import build_initial_prompts, load_stop_words, load_templates, write_prompts

        s = self.settings
        records = build_initial_prompts(self.base["dataset"], os.path.dirname(os.path.normpath(self.dataset_dir)),
                                        templates=load_templates(s["fve_templates"]), top_k=s["fve_keywords_topk"],
                                        reviews=s["fve_keyword_reviews"],
                                        stop_words=load_stop_words(s["fve_stopwords"]))
        write_prompts(self.prompts_path(0), records)
        return {"items": len(records), "prompts": self.prompts_path(0)}

    def stage_encode(self, x):
        from recbole_reveal.fve.cache import EmbeddingCache
        from recbole_reveal.fve.encoder import item_requests, save_encoding
        from recbole_reveal.fve.parallel import encode_data_parallel, resolve_num_processes
        from recbole_reveal.fve.prompts import read_prompts

        records = read_prompts(self.prompts_path(x))
        changed = len(records) if x == 0 else _prompt_changes(read_prompts(self.prompts_path(x - 1)), records)
        cache_dir = self.settings["fve_cache_dir"] or os.path.join(self.fve_dir, "cache")
        requests = item_requests(self.items, records, self.dataset_dir)
        processes = resolve_num_processes(self.settings["fve_num_processes"], self.settings["fve_device"])
        if processes > 1:
            result, description = encode_data_parallel(
                requests, _jsonable(self.settings), cache_dir, os.path.join(self.cycle_dir(x), "encode_workers"),
                processes)
        else:
            enc = self.encoder
            result = enc.encode_items(requests, cache=EmbeddingCache(cache_dir))
            description = enc.describe()
        save_encoding(result, description, self.feature_dir, f"fve/cycle_{x}",
                      {"cycle": x, "prompts": self.prompts_path(x), "processes": processes})
        summary = result.summary()
        logger.info("FVE cycle %d: %d prompts changed, %d items encoded, %d cache hits, %d missing images",
                    x, changed, summary["encoded"], summary["cache_hits"], summary["missing_images"])
        return {"prompts_changed": changed, "items_reencoded": summary["encoded"],
                "cache_hits": summary["cache_hits"], "missing_images": summary["missing_images"],
                "dim": int(description["dim"]), "processes": processes, "feature_set": f"fve/cycle_{x}"}

    def stage_train(self, x):
        """Train the backbone to convergence on cycle x's features (freshly initialised and seeded as
        ``run_recbole_reveal`` seeds it; with ``fve_warm_start``, cycles after the first start from the
        previous cycle's weights), then evaluate it on the test users."""
        from recbole_reveal.training import close_run_logs, fit_and_test

        config, loaders, model_obj, trainer = self.prepare(x)
        try:
            if self.settings["fve_warm_start"] and x > 0:
                previous = torch.load(self.model_path(x - 1), map_location=config["device"])
                kept = warm_start(trainer.model, previous, loaders[0]._dataset.item_features["vision"])
                logger.info("FVE cycle %d: warm start from cycle %d's backbone (re-initialised from the new "
                            "features: %s)", x, x - 1, ", ".join(kept) or "nothing")
            best_score, best_valid, test_result = fit_and_test(trainer, loaders, self.meter, saved=True,
                                                               show_progress=config["show_progress"])
        finally:
            close_run_logs()
        valid_data = loaders[1]
        path = self.model_path(x)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(trainer.model.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)
        self._trained[x] = (trainer, valid_data)
        return {"best_valid_score": float(best_score), "valid": _jsonable(dict(best_valid)),
                "test": _jsonable(dict(test_result))}

    def stage_feedback(self, x):
        from recbole_reveal.fve.feedback import compute_rankings, item_statistics, select_items
        from recbole_reveal.training import close_run_logs

        if x in self._trained:
            trainer, valid_data = self._trained.pop(x)
        else:                           # resumed: rebuild the loaders and load the saved weights
            config, (_, valid_data, _), _, trainer = self.prepare(x)
            close_run_logs()
            trainer.model.load_state_dict(torch.load(self.model_path(x), map_location=config["device"]))
        rankings = compute_rankings(trainer.model, valid_data, top_n=self.fs["fve_exposure_k"])
        stats = item_statistics(rankings, self.fs["fve_feedback_k"], self.fs["fve_exposure_k"])
        selection = select_items(stats, self.fs["fve_rewrite_fraction"])
        tokens = [str(t) for t in valid_data._dataset.field2id_token[valid_data._dataset.iid_field]]
        path = self.rankings_path(x)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            np.savez(f, users=rankings.users, targets=rankings.targets, target_rank=rankings.target_rank,
                     top=rankings.top, n_items=rankings.n_items, item_tokens=np.array(tokens))
        os.replace(path + ".tmp", path)
        sel = [{"item": int(i), "item_id": tokens[i], "label": label} for i, label in selection]
        _atomic_json(os.path.join(self.cycle_dir(x), "feedback.json"),
                     {"selection": sel, "valid_recall@k2": rankings.recall(self.fs["fve_feedback_k"][1])})
        return {"selected": len(sel), "pos": sum(s["label"] == "pos" for s in sel),
                "neg": sum(s["label"] == "neg" for s in sel)}

    def stage_critic(self, x):
        from recbole_reveal.fve.critic import apply_rewrites, build_requests, run_critic, write_critic_log
        from recbole_reveal.fve.feedback import Rankings, item_statistics
        from recbole_reveal.fve.prompts import load_templates, read_prompts, write_prompts

        with np.load(self.rankings_path(x), allow_pickle=False) as z:
            rankings = Rankings(users=z["users"], targets=z["targets"], target_rank=z["target_rank"],
                                top=z["top"], n_items=int(z["n_items"]))
            tokens = [str(t) for t in z["item_tokens"]]
        stats = item_statistics(rankings, self.fs["fve_feedback_k"], self.fs["fve_exposure_k"])
        saved = _read_json(os.path.join(self.cycle_dir(x), "feedback.json"))["selection"]
        selection = [(s["item"], s["label"]) for s in saved]
        records = read_prompts(self.prompts_path(x))
        requests = build_requests(selection, stats, rankings, tokens, self.items, records, self.dataset_dir,
                                  self.fs["fve_feedback_k"])
        templates = load_templates(self.settings["fve_templates"])
        vlm = self.encoder.vlm
        critic, counts = run_critic(vlm, requests, templates, self.cs["fve_rewrite_max_new_tokens"],
                                    self.cs["fve_rewrite_batch_size"], self.cs["fve_rewrite_seed"],
                                    min_pixels=self.settings["fve_min_pixels"],
                                    max_pixels=self.settings["fve_max_pixels"])
        write_critic_log(self.critic_path(x), critic)
        write_prompts(self.prompts_path(x + 1), apply_rewrites(records, critic, cycle=x + 1))
        return {"counts": dict(sorted(counts.items()))}

    # ---- results -----------------------------------------------------------------------------
    def table(self, n_cycles):
        rows = []
        for x in range(n_cycles):
            names = {k: f"cycle_{x}/{k}" for k in STAGE_KINDS}
            if not self.run.done(names["encode"]):
                break
            enc = self.run.record(names["encode"])
            train = self.run.record(names["train"]) if self.run.done(names["train"]) else {}
            crit = self.run.record(names["critic"]) if self.run.done(names["critic"]) else {}
            fb = self.run.record(names["feedback"]) if self.run.done(names["feedback"]) else {}
            rows.append({
                "cycle": x, "prompts_changed": enc["prompts_changed"], "items_reencoded": enc["items_reencoded"],
                "cache_hits": enc["cache_hits"], "missing_images": enc["missing_images"],
                "selected": fb.get("selected"), "critic": crit.get("counts"),
                "valid": train.get("valid", {}), "test": train.get("test", {}),
                "seconds": {k: (self.run.record(n)["seconds"] if self.run.done(n) else None)
                            for k, n in names.items()},
            })
        return rows
