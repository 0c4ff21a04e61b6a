"""Data-parallel FVE encoding (and the worker launch the critic's data-parallel generation shares): one
process per GPU, each encoding a shard of the items (merged into one result in request order).

The calling process writes the job (requests, FVE settings, cache folder) to a work folder and starts
``fve_num_processes`` workers with torchrun (``torch.distributed.run --standalone``, what
``accelerate launch --multi_gpu`` runs underneath). Each worker takes its rank, world size and device
from accelerate's :class:`~accelerate.PartialState` (``cuda:<local rank>``, or the CPU with gloo when
``fve_device: cpu``), loads the VLM on that device, encodes every ``world_size``-th request through the
shared content-addressed embedding cache (so an interrupted stage loses no finished batch), and writes
its shard atomically. The caller then merges the shards; it never loads the VLM for encoding.

Worker output (progress lines with items/s) is forwarded to this module's logger with a ``[rank r]``
prefix and kept in ``<work folder>/workers.log``; a failed worker is an error quoting that log's tail.
"""

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

from recbole_reveal.fve.encoding.encoder import EncodeResult, ItemRequest
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.infra.files import atomic_open

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"
LOG_FILE = "workers.log"


def resolve_num_processes(value, device):
    """``fve_num_processes`` as an int: ``auto`` = every visible GPU (1 on the CPU or without CUDA)."""
    if value == "auto":
        if str(device).startswith("cpu") or not torch.cuda.is_available():
            return 1
        return max(1, torch.cuda.device_count())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"fve_num_processes must be 'auto' or an integer >= 1; got {value!r}")
    if value > 1 and not str(device).startswith("cpu"):
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if value > visible:
            raise ConfigError(f"fve_num_processes: {value} GPU processes requested but {visible} GPU(s) are "
                              "visible; lower it, use 'auto', or set fve_device: cpu")
    return value


def _shard_paths(work_dir, rank):
    return os.path.join(work_dir, f"shard_{rank}.npz"), os.path.join(work_dir, f"shard_{rank}.json")


def encode_data_parallel(requests, settings, cache_dir, work_dir, num_processes, parts=None):
    """Encode ``requests`` with ``num_processes`` worker processes; returns ``(EncodeResult, description)``
    where ``description`` is the encoder's provenance (``FVEEncoder.describe()``) as the workers report it.
    ``parts``: lengths of consecutive parts of ``requests`` that each worker encodes in separate calls (so
    no embedding depends on the requests of another part through batch composition); default one part."""
    requests = list(requests)
    parts = list(parts) if parts is not None else [len(requests)]
    if sum(parts) != len(requests):
        raise ValueError(f"parts {parts} do not add up to the {len(requests)} requests")
    logger.info("FVE: encoding %d items with %d processes (%s)", len(requests), num_processes, settings["fve_device"])
    start = time.perf_counter()
    launch_workers(work_dir, {"kind": "encode", "requests": [asdict(r) for r in requests], "settings": settings,
                              "cache_dir": cache_dir, "parts": parts}, num_processes)
    result, description = merge_shards(requests, work_dir, num_processes)
    result.seconds = time.perf_counter() - start
    return result, description


def launch_workers(work_dir, job, num_processes, module=__name__):
    """Write ``job`` to ``work_dir`` and run ``num_processes`` workers of ``module`` (``python -m module
    work_dir`` calls :func:`run_worker`) on it with torchrun; their output
    goes to ``workers.log`` (progress lines also to this module's logger). A failed worker is an error
    quoting each worker's exception (or the log's tail)."""
    os.makedirs(work_dir, exist_ok=True)
    for rank in range(max(num_processes, 64)):
        for path in (*_shard_paths(work_dir, rank), _error_path(work_dir, rank)):
            if os.path.exists(path):
                os.remove(path)
    with open(os.path.join(work_dir, JOB_FILE), "w", encoding="utf-8") as f:
        json.dump(job, f)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
           "-m", module, work_dir]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    log_path = os.path.join(work_dir, LOG_FILE)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            log.write(line)
            if line.startswith("[rank "):
                logger.info("%s", line.rstrip())
        code = proc.wait()
    if code != 0:
        errors = []
        for rank in range(num_processes):
            if os.path.exists(_error_path(work_dir, rank)):
                with open(_error_path(work_dir, rank), encoding="utf-8") as f:
                    errors.append(f"worker {rank}: {f.read()}")
        if not errors:
            with open(log_path, encoding="utf-8") as f:
                errors.append("".join(f.readlines()[-30:]))
        what = {"encode": "encoding", "critic": "critic generation"}[job["kind"]]
        raise RuntimeError(f"FVE data-parallel {what} failed (exit {code}); full worker log: {log_path}\n"
                           + "\n".join(errors))


def merge_shards(requests, work_dir, num_processes):
    """One :class:`EncodeResult` in request order from the workers' shard files."""
    tokens = [r.token for r in requests]
    matrix, description = None, None
    encoded, cached, missing, vision, work = set(), set(), {}, {}, {}
    for rank in range(num_processes):
        npz, meta_path = _shard_paths(work_dir, rank)
        if not (os.path.exists(npz) and os.path.exists(meta_path)):
            raise RuntimeError(f"FVE data-parallel encoding: worker {rank} wrote no shard ({npz})")
        with np.load(npz, allow_pickle=False) as z:
            shard_tokens, shard_matrix = [str(t) for t in z["tokens"]], z["matrix"]
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if shard_tokens != tokens[rank::num_processes]:
            raise RuntimeError(f"FVE data-parallel encoding: shard {rank} does not hold the expected items")
        if description is None:
            description = meta["description"]
            matrix = np.zeros((len(requests), shard_matrix.shape[1]), dtype=np.float32)
        elif meta["description"]["vlm_model_id"] != description["vlm_model_id"]:
            raise RuntimeError("FVE data-parallel encoding: workers loaded different VLMs")
        if len(shard_tokens):
            matrix[rank::num_processes] = shard_matrix
        encoded.update(meta["encoded"])
        cached.update(meta["cached"])
        missing.update(meta["missing"])
        for k, v in meta["vision"].items():
            vision[k] = vision.get(k, 0) + v
        for k, v in meta.get("work", {}).items():
            work[k] = work.get(k, 0) + v
    order = {t: i for i, t in enumerate(tokens)}
    result = EncodeResult(tokens=tokens, matrix=matrix)
    result.encoded = sorted(encoded, key=order.get)
    result.cached = sorted(cached, key=order.get)
    result.missing = {t: missing[t] for t in sorted(missing, key=order.get)}
    result.vision = vision
    result.work = {k: round(v, 6) for k, v in work.items()}
    return result, description


def _atomic_save(path, write):
    with atomic_open(path, "wb") as f:
        write(f)


def worker(work_dir, run_part):
    """One worker: run this rank's part of the job in ``work_dir`` with ``run_part(job, settings, work_dir,
    rank, world)`` (encode a shard, or answer batches)."""
    from accelerate import PartialState

    with open(os.path.join(work_dir, JOB_FILE), encoding="utf-8") as f:
        job = json.load(f)
    settings = dict(job["settings"])
    on_cpu = str(settings["fve_device"]).startswith("cpu")
    state = PartialState(cpu=on_cpu)
    rank, world = state.process_index, state.num_processes
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(message)s", stream=sys.stdout, force=True)
    settings["fve_device"] = "cpu" if on_cpu else str(state.device)
    run_part(job, settings, work_dir, rank, world)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _encode_worker(job, settings, work_dir, rank, world):
    from recbole_reveal.fve.encoding.cache.embeddings import EmbeddingCache
    from recbole_reveal.fve.encoding.build import build_fve_encoder

    from recbole_reveal.fve.encoding.interaction_encoding import merge

    everything = [ItemRequest(**r) for r in job["requests"]]
    encoder = build_fve_encoder(settings)
    cache = EmbeddingCache(job["cache_dir"])
    results, lo = [], 0
    for size in job.get("parts") or [len(everything)]:
        # this rank's requests inside the part, in the order of the whole list (the shard is [rank::world])
        first = lo + (rank - lo) % world
        results.append(encoder.encode_items(everything[first:lo + size:world], cache=cache))
        lo += size
    result = merge(results)
    npz, meta_path = _shard_paths(work_dir, rank)
    _atomic_save(npz, lambda f: np.savez(f, tokens=np.array(result.tokens, dtype=str),
                                         matrix=result.matrix.astype(np.float32)))
    meta = {"encoded": result.encoded, "cached": result.cached, "missing": result.missing,
            "vision": result.vision, "work": result.work, "seconds": result.seconds, "device": settings["fve_device"],
            "description": encoder.describe()}
    _atomic_save(meta_path, lambda f: f.write(json.dumps(meta).encode()))


def _error_path(work_dir, rank):
    return os.path.join(work_dir, f"shard_{rank}.error")


def run_worker(work_dir, run_part):
    """A worker process's main: :func:`worker`, with its exception recorded for the caller's message."""
    rank = int(os.environ.get("RANK", 0))
    try:
        worker(work_dir, run_part)
    except Exception as e:   # recorded for the caller's error message, then re-raised for torchrun
        with open(_error_path(work_dir, rank), "w", encoding="utf-8") as f:
            f.write(f"{type(e).__name__}: {e}")
        raise


if __name__ == "__main__":
    run_worker(sys.argv[1], _encode_worker)
