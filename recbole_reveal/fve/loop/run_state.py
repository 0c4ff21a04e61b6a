"""The FVE run folder's bookkeeping: which stages are finished, with which config, and whether their files
can still be trusted.

``<fve_run_dir>/stages.json`` = ``{format, fingerprint, config, stages: {name: record}}``. A record is
written atomically after the stage's files (themselves written atomically) and keeps the SHA-256 of those
files, so a resumed run trusts a finished stage only while its files are there unchanged. The fingerprint
covers every result-relevant config key (:func:`fingerprint_config`); a different one is a
:class:`~recbole_reveal.infra.errors.ConfigError` naming the changed keys.
"""

import hashlib
import json
import logging
import os

from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.infra.files import file_sha256, jsonable, locked_folders, write_json_atomic

logger = logging.getLogger(__name__)

STAGES_FILE = "stages.json"
FORMAT_VERSION = 1
# Config keys that never change a result: logging, paths of by-products, the loop's own control keys,
# how the critic reaches its model (address, key, concurrency, timeouts) and when to stop a run.
# ``vision_feature`` / ``vision_feature_dim`` / ``vision_interaction_feature`` / ``checkpoint_dir`` are set by
# the loop per cycle. ``nproc`` / ``world_size`` are not ignored: N processes see each batch's rows in another
# order, so the trained backbone differs (slightly) from one process's.
IGNORED_KEYS = {
    "fve_stop_after", "fve_run_dir", "fve_cycles", "fve_preprocess_workers", "fve_vision_cache_mb",
    "fve_history_table_device",
    "fve_num_processes", "fve_vision_cache_disk_mb", "fve_keyword_cache_dir", "fve_vlm_offload",
    "fve_vision_cache_dir", "fve_cache_dir", "feature_dir", "show_progress", "state",
    "checkpoint_dir", "vision_feature", "vision_feature_dim", "vision_interaction_feature", "log_wandb",
    "wandb_project", "tensorboard",
    "device", "gpu_id", "use_gpu", "worker", "local_rank", "offset", "ip", "port", "ddp_timeout",
    "backend", "single_spec", "save_dataset", "dataset_save_path", "save_dataloaders", "dataloaders_save_path",
    "log_dir", "fve_generation_endpoint", "fve_generation_api_key_env", "fve_generation_concurrency",
    "fve_generation_timeout", "fve_generation_retries", "fve_min_acceptance", "fve_acceptance_warning",
    "vlm_path",                 # the model is known by its files' content (vlm_model_id), not by its path
}
LOCK_ADVICE = ("Wait for that run to end (a run with the same config then resumes from its stages), or give this "
               "run its own feature_dir and fve_run_dir")


def fingerprint_config(config, settings):
    """The result-relevant settings of a run: the RecBole config (minus :data:`IGNORED_KEYS`) and every
    FVE setting with its default filled in. Returns ``(dict, sha256)``."""
    keys = dict(config.final_config_dict)
    keys.update(settings)
    relevant = {k: jsonable(v) for k, v in keys.items() if k not in IGNORED_KEYS}
    if settings.get("vlm_path"):            # a moved model folder resumes; another model does not
        from recbole_reveal.fve.vlm.folder import vlm_model_id

        relevant["vlm_model_id"] = vlm_model_id(settings["vlm_path"])
    blob = json.dumps(relevant, sort_keys=True)
    return relevant, hashlib.sha256(blob.encode()).hexdigest()


def run_folders_locked(run_dir, fve_dir):
    """Hold the run folder and the feature folder's ``fve/`` (prompts, per-cycle features) for one run:
    a second run on either stops at once with a ``FolderInUseError`` naming this one."""
    return locked_folders([run_dir, fve_dir], "running the FVE loop", advice=LOCK_ADVICE)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class RunState:
    """The finished stages of one run folder; raises ``ConfigError`` when the folder holds finished
    stages of another config (or another format)."""

    def __init__(self, run_dir, relevant, fingerprint):
        self.dir = run_dir
        self.path = os.path.join(run_dir, STAGES_FILE)
        self.state = {"format": FORMAT_VERSION, "fingerprint": fingerprint, "config": relevant, "stages": {}}
        if os.path.isfile(self.path):
            saved = read_json(self.path)
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

    def record(self, name, default=None):
        """The record of finished stage ``name`` (``default`` when it is not finished)."""
        return self.state["stages"].get(name, default)

    def finish(self, name, record, artefacts):
        """Record stage ``name`` as finished with the SHA-256 of its ``artefacts`` (file paths)."""
        record["artefact_sha256"] = [file_sha256(p) for p in artefacts]
        self.state["stages"][name] = record
        write_json_atomic(self.path, self.state, sort_keys=True)

    def forget_untrusted(self, stages, ctx):
        """Drop the first finished stage (of ``stages``, in order) whose files are gone or changed, and
        every stage after it, with a warning: they rerun."""
        for n, stage in enumerate(stages):
            if not self.done(stage.name):
                continue
            problem = artefact_problem(stage.artefacts(ctx), self.record(stage.name).get("artefact_sha256"))
            if problem:
                logger.warning("FVE: stage %s is recorded as finished but %s; rerunning from it", stage.name, problem)
                for later in stages[n:]:
                    self.state["stages"].pop(later.name, None)
                write_json_atomic(self.path, self.state, sort_keys=True)
                return


def artefact_problem(paths, digests):
    """Why a stage's saved files cannot be trusted (None when they can): a file is gone, or differs from
    the one the stage wrote (``digests``; records of older runs have none)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        return f"its files are gone ({', '.join(missing)})"
    if digests is not None:
        changed = [p for p, d in zip(paths, digests) if file_sha256(p) != d]
        if changed:
            return (f"{', '.join(changed)} changed since it wrote them (another FVE run with the same "
                    "feature_dir? give each run its own feature_dir and fve_run_dir)")
    return None
