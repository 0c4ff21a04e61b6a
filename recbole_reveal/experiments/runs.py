"""One experiment run = (model, config overrides, seed) on a dataset, saved as one JSON file as soon as
it finishes; a run whose file exists is loaded instead of trained again (a killed sweep loses nothing).

A run goes through ``run_recbole_reveal`` (the entry script's single pass), or, when
``recbole_reveal.config.fve_requested`` says so (a ``*_REVEAL`` model with ``fve: True``, or
``vlm_path`` set with ``fve: ~``; the entry script decides the same way), through the FVE loop
``run_fve``. An FVE run gets a folder of its own under the store (``fve/``: stages, models, and a
feature folder whose ``fve/cycle_<x>`` sets belong to this run only); the content-addressed embedding
cache stays shared.
"""

import hashlib
import json
import os
import time

from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.infra.files import jsonable, write_json_atomic

SCHEMA = 1
# keys whose value never changes a run's numbers; they are left out of a run's identity
_NOT_IDENTITY = {"checkpoint_dir", "show_progress", "state", "fve_run_dir", "fve_cache_dir",
                 "fve_vision_cache_dir", "fve_preprocess_workers", "fve_vision_cache_mb", "fve_num_processes",
                 "ip", "port", "ddp_timeout"}


def _digest(obj, n=10):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def model_display_name(model):
    """``Class`` for your own model given as ``"<file.py|module>:<Class>"``, else the name itself."""
    return model.rpartition(":")[2]


class RunSpec:
    """A model and the config overrides that define a setting (everything but the seed)."""

    def __init__(self, model, overrides=None):
        self.model = model
        self.overrides = jsonable(dict(overrides or {}))
        if "seed" in self.overrides:
            raise ConfigError("a run's seed is given per run (--seeds / --n_seeds), not in its overrides")

    @property
    def identity(self):
        return {"model": self.model,
                "overrides": {k: v for k, v in self.overrides.items() if k not in _NOT_IDENTITY}}

    @property
    def key(self):
        return _digest(self.identity)

    @property
    def label(self):
        if not self.overrides:
            return self.model
        return self.model + " [" + ", ".join(f"{k}={v}" for k, v in sorted(self.overrides.items())) + "]"

    def with_overrides(self, **extra):
        return RunSpec(self.model, dict(self.overrides, **extra))

    def __eq__(self, other):
        return isinstance(other, RunSpec) and self.identity == other.identity

    def __hash__(self):
        return hash(self.key)

    def __repr__(self):
        return f"RunSpec({self.label})"


class ResultStore:
    """Run records under ``<root>/runs/<model>-<key>-seed<seed>.json``."""

    def __init__(self, root):
        self.root = root
        self.runs_dir = os.path.join(root, "runs")

    def path(self, spec, seed):
        return os.path.join(self.runs_dir, f"{model_display_name(spec.model)}-{spec.key}-seed{seed}.json")

    def load(self, spec, seed, dataset):
        """The saved record of this run, or None. A file that holds another run is an error."""
        path = self.path(spec, seed)
        if not os.path.isfile(path):
            return None
        record = read_record(path)
        saved = {"model": record.get("model"), "overrides": record.get("overrides", {})}
        saved_identity = RunSpec(saved["model"], saved["overrides"]).identity
        if saved_identity != spec.identity or record.get("seed") != seed or record.get("dataset") != dataset:
            raise ConfigError(f"{path} holds another run ({record.get('model')}, seed {record.get('seed')}, "
                              f"dataset {record.get('dataset')}, overrides {record.get('overrides')}); "
                              "delete it or use another --out")
        return record

    def save(self, record):
        spec = RunSpec(record["model"], record["overrides"])
        path = self.path(spec, record["seed"])
        write_json(path, record)
        return path

    def records(self):
        return load_records([self.root])


def write_json(path, obj):
    """Write ``obj`` as JSON atomically."""
    write_json_atomic(path, obj, indent=1)


def read_record(path):
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the run record {path}: {e}") from e
    missing = [k for k in ("schema", "model", "dataset", "seed", "test_result") if k not in record]
    if missing:
        raise ConfigError(f"{path} is not a run record of recbole_reveal.experiments (missing {missing})")
    return record


def load_records(paths):
    """Every run record in ``paths`` (record files, or folders searched recursively for ``*.json``
    files that are run records; other JSON files there, e.g. cost reports, are passed over)."""
    records = []
    for path in paths:
        if os.path.isfile(path):
            records.append(dict(read_record(path), path=path))
            continue
        if not os.path.isdir(path):
            raise ConfigError(f"results path not found: {path}")
        for folder, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                if name.endswith(".json") and not name.endswith(".cost.json"):
                    full = os.path.join(folder, name)
                    try:
                        with open(full, encoding="utf-8") as f:
                            record = json.load(f)
                    except (OSError, ValueError):
                        continue
                    if isinstance(record, dict) and record.get("schema") == SCHEMA and "test_result" in record:
                        records.append(dict(record, path=full))
    return records


def execute(spec, seed, dataset, store, config_files=(), log=print):
    """Run ``spec`` with ``seed`` on ``dataset`` unless its record exists; returns ``(record, ran)``."""
    record = store.load(spec, seed, dataset)
    if record is not None:
        return record, False
    from recbole_reveal.config import build_config, fve_requested
    from recbole_reveal.quick_start import run_with_config

    config_dict = dict(spec.overrides, seed=seed)
    config_dict.setdefault("checkpoint_dir", os.path.join(store.root, "checkpoints"))
    start = time.perf_counter()
    config = build_config(spec.model, dataset, list(config_files), config_dict)
    if fve_requested(config):
        result = _run_fve(spec, seed, dataset, store, list(config_files), config_dict, config)
    else:
        result = run_with_config(config)
    record = {
        "schema": SCHEMA, "model": spec.model, "dataset": dataset, "seed": seed,
        "overrides": spec.overrides, "config_files": list(config_files),
        "seconds": round(time.perf_counter() - start, 3),
    }
    for key, value in result.items():
        if key == "config":
            value = value.final_config_dict
        record[key] = jsonable(value)
    store.save(record)
    return record, True


def _run_fve(spec, seed, dataset, store, config_files, config_dict, base):
    """The FVE loop in a folder of this run's own; its last cycle is the run's result."""
    from recbole_reveal.fve.loop.run import run_fve

    source_features = base["feature_dir"] or os.path.join(base["data_path"], "features")
    # fve_cycles is not part of the folder's name: a loop run for more cycles extends one run for
    # fewer (the loop resumes), and one run for fewer reads the first cycles back
    identity = spec.identity
    identity["overrides"] = {k: v for k, v in identity["overrides"].items() if k != "fve_cycles"}
    run_dir = os.path.join(store.root, "fve", f"{spec.model}-{_digest(identity)}-seed{seed}")
    feature_dir = os.path.join(run_dir, "features")
    _link_feature_sets(source_features, feature_dir)
    config_dict = dict(config_dict, fve_run_dir=os.path.join(run_dir, "loop"), feature_dir=feature_dir)
    config_dict.setdefault("fve_cache_dir", os.path.join(source_features, "fve", "cache"))
    out = run_fve(spec.model, dataset, config_files, config_dict)
    if out["stopped_after"]:
        raise ConfigError(f"the FVE loop stopped after {out['stopped_after']} (fve_stop_after): "
                          "an experiment needs finished runs; unset fve_stop_after")
    final = out["table"][-1]
    metric = base["valid_metric"].lower()
    return {
        "best_valid_score": final["valid"].get(metric), "valid_score_bigger": base["valid_metric_bigger"],
        "best_valid_result": final["valid"], "test_result": final["test"], "masked_test_results": {},
        "fve_cycles_table": out["table"], "cost": out["cost"], "config": base,
    }


def _link_feature_sets(source, target):
    """``target`` holds links to the feature files of ``source`` (not its ``fve/`` folder)."""
    if not os.path.isdir(source):
        raise ConfigError(f"feature folder not found: {source}")
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(source):
        src, dst = os.path.join(source, name), os.path.join(target, name)
        if os.path.isfile(src) and not os.path.lexists(dst):
            os.symlink(os.path.abspath(src), dst)


# where a run wrote its outputs or found its files: not part of what was run
_LOCATION_KEYS = ("checkpoint_dir", "data_path", "fve_run_dir", "fve_cache_dir", "fve_vision_cache_dir",
                  "log_dir", "show_progress", "state", "ip", "port", "ddp_timeout", "ddp_init_method")


def same_run_key(record):
    """Records of the same run (dataset, model, seed, resolved config apart from locations) share this
    key, e.g. the default-α REVEAL run of a ``seeds`` table and the α = 0.1 point of a sweep."""
    config = {k: v for k, v in (record.get("config") or {}).items() if k not in _LOCATION_KEYS}
    return json.dumps([record.get("dataset"), record.get("model"), record.get("seed"), config],
                      sort_keys=True, default=str)


def distinct_runs(records):
    """``(records, n_dropped)``: the first record of each run (``same_run_key``)."""
    seen, kept = set(), []
    for record in records:
        key = same_run_key(record)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept, len(records) - len(kept)
