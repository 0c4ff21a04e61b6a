"""RecBole 1.2.1's distributed path made to work on CPUs and GPUs, applied in each worker process of a
distributed run (never in a single-process run) by :func:`patch_recbole`: the backend follows the device
(NCCL on CUDA, gloo on CPU; RecBole hard-codes NCCL and ``cuda:<local_rank>``); DDP gets ``device_ids``
only on CUDA; the process group is joined once per process however many configs a run builds; only
global rank 0 logs (the other ranks write no log file and no tensorboard folder); every rank uses rank
0's checkpoint name and reads the best checkpoint after a barrier; evaluation shards without
``DistributedSampler``'s padding and scores the ranked rows of all ranks together, so every rank gets
exactly the metrics one process computes for the same model (RecBole averages per-rank rounded metrics,
weighted by a sample count that is really a batch count, over shards that repeat users); the training
shards are reshuffled from the run's ``seed``."""

import datetime
import os

from recbole_reveal.infra.collectives import process_group, broadcast_object, uses_cuda
from recbole_reveal.infra.errors import ConfigError

INIT_KEY = "ddp_init_method"          # set by the launcher: "env://" under torchrun, else tcp://ip:port


_PATCHED = {}


def patch_recbole(rank):
    """Make RecBole 1.2.1's distributed path work on CPUs and GPUs in this (worker) process; ``rank`` is
    its global rank (only rank 0 logs). Idempotent."""
    if _PATCHED:
        return
    from recbole_reveal.adaptation import compat    # here: the launcher that imports this module stays light

    compat.apply()
    import recbole.trainer.trainer as recbole_trainer
    import recbole.utils.logger as recbole_logger
    from recbole.config import Config

    _PATCHED["rank"] = rank
    _PATCHED["init_device"] = Config._init_device
    Config._init_device = _init_device
    recbole_trainer.AbstractTrainer.__init__ = _abstract_trainer_init
    _PATCHED["fit"] = recbole_trainer.Trainer.fit
    recbole_trainer.Trainer.fit = _fit
    _PATCHED["evaluate"] = recbole_trainer.Trainer.evaluate
    recbole_trainer.Trainer.evaluate = _evaluate
    _PATCHED["map_reduce"] = recbole_trainer.Trainer._map_reduce
    recbole_trainer.Trainer._map_reduce = _map_reduce
    if rank != 0:
        recbole_logger.logging = _QuietLogging()
        recbole_trainer.get_tensorboard = lambda logger: _NoTensorboard()


def _init_device(self):
    """RecBole's ``Config._init_device``, with the backend following the device."""
    cfg = self.final_config_dict
    if "local_rank" not in cfg:
        return _PATCHED["init_device"](self)
    import torch
    import torch.distributed as dist

    gpu_id = cfg["gpu_id"]
    cfg["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
    os.environ["CUDA_VISIBLE_DEVICES"] = cfg["gpu_id"]        # as RecBole does, before CUDA is queried
    cuda = uses_cuda(cfg)
    local_rank, offset = int(cfg["local_rank"]), int(cfg.get("offset") or 0)
    rank = local_rank + offset
    listed = [g for g in cfg["gpu_id"].split(",") if g.strip()]
    if cuda and local_rank >= min(len(listed), torch.cuda.device_count()):
        raise ConfigError(f"local rank {local_rank} needs GPU #{local_rank}, but gpu_id='{cfg['gpu_id']}' gives "
                          f"{min(len(listed), torch.cuda.device_count())}: list one GPU per process on this machine")
    if not dist.is_initialized():
        init_method = cfg.get(INIT_KEY) or f"tcp://{cfg['ip']}:{cfg['port']}"
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method=init_method, rank=rank,
                                world_size=int(cfg["world_size"]),
                                timeout=datetime.timedelta(seconds=float(cfg.get("ddp_timeout") or 1800)))
    if cuda:
        cfg["device"] = torch.device("cuda", local_rank)
        torch.cuda.set_device(local_rank)
    else:
        cfg["device"] = torch.device("cpu")
    cfg["single_spec"] = False
    if rank != 0:
        cfg["state"] = "error"
        cfg["show_progress"] = False
        cfg["verbose"] = False


def _abstract_trainer_init(self, config, model):
    """RecBole's ``AbstractTrainer.__init__``: DDP ``device_ids`` and SyncBatchNorm only on CUDA."""
    self.config = config
    self.model = model
    if not config["single_spec"]:
        import torch
        from torch.nn.parallel import DistributedDataParallel

        cuda = config["device"].type == "cuda"
        if cuda:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.distributed_model = DistributedDataParallel(
            self.model, device_ids=[config["device"].index] if cuda else None
        )


def _fit(self, train_data, *args, **kwargs):
    if not self.config["single_spec"]:
        # every rank saves to / reads from rank 0's checkpoint name (names carry a time and a random part)
        self.saved_model_file = broadcast_object(self.saved_model_file, self.config)
        sampler = getattr(train_data, "sampler", None)
        if sampler is not None and hasattr(sampler, "seed"):
            sampler.seed = int(self.config["seed"])   # DistributedSampler shuffles from seed 0 otherwise
    return _PATCHED["fit"](self, train_data, *args, **kwargs)


def _evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
    if not self.config["single_spec"] and eval_data:
        _shard_without_padding(eval_data, self.config)
        if not isinstance(self.evaluator, _GatheringEvaluator):
            self.evaluator = _GatheringEvaluator(self.evaluator, self.config)
        if load_best_model:
            process_group().barrier()          # rank 0 may still be writing the best checkpoint
    return _PATCHED["evaluate"](self, eval_data, load_best_model=load_best_model, model_file=model_file,
                                show_progress=show_progress)


def _map_reduce(self, result, num_sample):
    if isinstance(self.evaluator, _GatheringEvaluator):
        return result                  # already the metrics of all ranks' rows together
    return _PATCHED["map_reduce"](self, result, num_sample)


class _RankShard:
    """Rows ``rank, rank + world_size, ...`` of ``n``: DistributedSampler's split without its padding,
    which repeats rows so that all ranks have as many (and would count those users twice)."""

    def __init__(self, n, rank, world_size):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def _shard_without_padding(eval_data, config):
    from torch.utils.data.distributed import DistributedSampler

    batch_sampler = getattr(eval_data, "batch_sampler", None)
    if batch_sampler is not None and isinstance(batch_sampler.sampler, DistributedSampler):
        sampler = batch_sampler.sampler
        batch_sampler.sampler = _RankShard(len(sampler.dataset), sampler.rank, sampler.num_replicas)


# collected per ranked row by RecBole's Collector (the other entries are dataset-wide, equal on all ranks)
_ROW_KEYS = ("rec.items", "rec.topk", "rec.meanrank", "rec.score", "data.label")


class _GatheringEvaluator:
    """RecBole's Evaluator over the rows of every rank: identical metrics on all ranks, equal to one
    process ranking all users."""

    def __init__(self, evaluator, config):
        self.evaluator = evaluator
        self.config = config

    def evaluate(self, struct):
        import torch

        dist = process_group()
        for key in _ROW_KEYS:
            if key in struct:
                parts = [None] * dist.get_world_size()
                dist.all_gather_object(parts, struct.get(key).cpu())
                struct.set(key, torch.cat(parts, dim=0))
        return self.evaluator.evaluate(struct)

    def __getattr__(self, name):
        return getattr(self.evaluator, name)


class _NoTensorboard:
    """What a non-zero rank writes to tensorboard: nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class _QuietLogging:
    """``logging`` as RecBole's ``init_logger`` sees it on a non-zero rank: no log file is created (its
    level is ERROR there anyway: errors still reach stderr)."""

    def __getattr__(self, name):
        import logging

        return getattr(logging, name)

    @staticmethod
    def FileHandler(*args, **kwargs):  # noqa: N802  (logging's name)
        import logging

        return logging.NullHandler()
