"""Training past one process: RecBole 1.2.1's own distributed path (torch DDP), on GPUs and on CPUs.

What stays RecBole's: a config that holds ``local_rank`` joins a process group when it is built; the
data loaders shard every epoch with a ``DistributedSampler``, each rank taking
``train_batch_size // world_size`` rows a step, so a step of N processes trains on the same
``train_batch_size`` rows as a step of one process (the *global batch*); the trainer wraps the model in
``DistributedDataParallel``, whose backward averages the gradients over the ranks; the best
checkpoint is written by each machine's local rank 0.

What this module adds (docs/distributed.md):

* :func:`patch_recbole` -- applied in each worker process, never in a single-process run: the backend
  follows the device (NCCL on CUDA, gloo on CPU; RecBole hard-codes NCCL and ``cuda:<local_rank>``);
  DDP gets ``device_ids`` only on CUDA; the process group is joined once per process however many
  configs a run builds; only global rank 0 logs (the other ranks write no log file and no tensorboard
  folder); every rank uses rank 0's checkpoint name and reads the best checkpoint after a barrier;
  evaluation shards without ``DistributedSampler``'s padding and scores the ranked rows of all ranks
  together, so every rank gets exactly the metrics one process computes for the same model (RecBole
  averages per-rank rounded metrics, weighted by a sample count that is really a batch count, over
  shards that repeat users); the training shards are reshuffled from the run's ``seed``.
* :func:`plan_from_config` / :meth:`Plan.run` -- ``nproc`` worker processes (torch.multiprocessing spawn, as
  RecBole's ``run_recboles``), each running the same entry function; global rank 0's return value comes
  back; a rank that fails ends the others and its error is raised in the caller. The request is checked
  before anything starts: process count against GPUs or CPU cores, multi-machine keys, a free port.
  A process started by ``torchrun`` joins through ``env://`` and runs in place.
* helpers for code that must agree across ranks (AVL): :func:`all_reduce_weighted_mean`,
  :func:`is_main_process`.
"""

import datetime
import os
import pickle
import shutil
import socket
import tempfile
import traceback
from dataclasses import dataclass, field, replace

from recbole_reveal.infra.errors import ConfigError, RevealUserError

# RecBole's distributed config keys, plus how long a collective may wait
DIST_KEYS = ("nproc", "world_size", "offset", "ip", "port", "ddp_timeout")
_INIT_KEY = "ddp_init_method"          # set by this module: "env://" under torchrun, else tcp://ip:port


class DistributedRunError(RuntimeError):
    """A worker process failed (an exception, a signal, an exit code); names the rank and the cause."""


# -- who am I ------------------------------------------------------------------------------------
def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def is_distributed(config):
    return not config["single_spec"]


def global_rank(config):
    """Rank of this process over all machines (RecBole's ``local_rank`` + ``offset``)."""
    if config["single_spec"]:
        return 0
    return int(config["local_rank"]) + int(config["offset"] or 0)


def is_main_process(config):
    """Whether this process reports: logs, cost reports, run records, the printed result."""
    return global_rank(config) == 0


def all_reduce_weighted_mean(values, weight, device):
    """``sum_r weight_r * values_r / sum_r weight_r`` over the ranks, as Python floats (identical on
    every rank); ``values`` unchanged when no process group is running. A non-finite value on any rank
    makes the result non-finite on every rank, so decisions taken on it agree."""
    dist = _dist()
    if dist is None:
        return [float(v) for v in values]
    import torch

    # float64 sums of the same numbers in the same order: identical bits on every rank
    buffer = torch.tensor([float(v) * weight for v in values] + [float(weight)], dtype=torch.float64,
                          device=device)
    dist.all_reduce(buffer)
    total = buffer[-1].item()
    return [x / total for x in buffer[:-1].tolist()]


def broadcast_object(obj, config):
    """Rank 0's ``obj`` on every rank."""
    dist = _dist()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_collective_device(config))
    return box[0]


def _collective_device(config):
    device = config["device"]
    return device if device.type == "cuda" else None


# -- the request -----------------------------------------------------------------------------------
@dataclass
class Plan:
    """How this machine takes part in a distributed run."""

    nproc: int                # processes on this machine
    world_size: int           # processes on all machines
    offset: int               # global rank of this machine's first process
    ip: str
    port: int
    cuda: bool
    timeout: float
    launcher: str = "spawn"   # spawn: this process starts nproc workers; torchrun: this process is one
    torchrun_local_rank: int = field(default=0)

    @property
    def backend(self):
        return "nccl" if self.cuda else "gloo"

    def worker_config(self, local_rank):
        """The distributed keys a worker's config holds (RecBole reads ``local_rank`` as 'distributed')."""
        return {
            "local_rank": local_rank, "nproc": self.nproc, "world_size": self.world_size,
            "offset": self.offset, "ip": self.ip, "port": self.port, "ddp_timeout": self.timeout,
            _INIT_KEY: "env://" if self.launcher == "torchrun" else f"tcp://{self.ip}:{self.port}",
        }

    def run(self, target, *args, config_dict=None, **kwargs):
        """``target(*args, config_dict=..., **kwargs)`` on every rank of this machine; global rank 0's
        return value (None on a machine without rank 0)."""
        if self.launcher == "torchrun":
            return _run_worker(self.torchrun_local_rank, self, target, args, dict(kwargs, config_dict=config_dict),
                               result_dir=None)
        return _spawn(self, target, args, dict(kwargs, config_dict=config_dict))


def refuse_distributed(config, what):
    """A ``ConfigError`` when ``config`` asks for several processes (or this is a torchrun worker) for
    ``what``, which trains in one process only: said, not silently ignored."""
    if plan_from_config(config, check_port=False) is not None:
        raise ConfigError(f"{what} runs in one process: nproc={config['nproc']}, world_size={config['world_size']} "
                          "cannot be honoured there; drop --nproc / --world_size (or launch it without torchrun)")


def _int_key(config, key, default):
    value = config[key] if key in config else None
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}") from None
    if number != int(number):
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    return int(number)


def uses_cuda(config):
    """Whether a distributed run of ``config`` trains on GPUs (RecBole: a non-empty ``gpu_id`` and CUDA)."""
    import torch

    gpu_id = config["gpu_id"]
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id or "")
    use_gpu = config["use_gpu"] if "use_gpu" in config else True
    return bool(gpu_id.strip()) and use_gpu is not False and torch.cuda.is_available()


def plan_from_config(config, check_port=True):
    """The :class:`Plan` of a run: this process as a torchrun worker, or the processes ``config``'s
    distributed keys ask for (checked: process count, keys, a free port); ``None`` for one process and
    inside a worker (whose config already runs distributed)."""
    if not config["single_spec"]:
        return None
    torchrun = _torchrun_plan()
    if torchrun is not None:
        return torchrun
    nproc = _int_key(config, "nproc", 1)
    world_size = _int_key(config, "world_size", -1)
    if nproc < 1:
        raise ConfigError(f"config key 'nproc' must be >= 1 (processes on this machine), got {nproc}")
    if world_size in (-1, 0):
        world_size = nproc
    if nproc == 1 and world_size == 1:
        return None
    offset = _int_key(config, "offset", 0)
    if world_size < nproc:
        raise ConfigError(f"world_size={world_size} is smaller than nproc={nproc}: world_size counts the "
                          "processes of all machines (-1 = nproc, one machine)")
    if not 0 <= offset <= world_size - nproc:
        raise ConfigError(f"offset={offset}: the global rank of this machine's first process must be in "
                          f"[0, world_size - nproc] = [0, {world_size - nproc}]")
    timeout = float(config["ddp_timeout"] if "ddp_timeout" in config and config["ddp_timeout"] else 1800)
    if timeout <= 0:
        raise ConfigError(f"config key 'ddp_timeout' must be a positive number of seconds, got {timeout}")
    cuda = uses_cuda(config)
    _check_process_count(nproc, cuda, config)
    ip = str(config["ip"] if "ip" in config and config["ip"] else "localhost")
    multi_machine = world_size > nproc
    port = config["port"] if "port" in config else None
    if multi_machine and port in (None, "", "auto"):
        raise ConfigError(f"world_size={world_size} > nproc={nproc} (several machines): set --port to a port "
                          "every machine can reach on the machine with offset 0 (e.g. --port=29500), and --ip "
                          "to that machine's address")
    port = _int_key({"port": port}, "port", 0) if port not in (None, "", "auto") else 0
    if port and not 0 < port < 65536:
        raise ConfigError(f"config key 'port' must be a TCP port in 1..65535, got {port}")
    if offset == 0 and check_port:      # this machine hosts rank 0, which listens on the port
        port = _free_port(ip, port)
    return Plan(nproc=nproc, world_size=world_size, offset=offset, ip=ip, port=port, cuda=cuda,
                timeout=timeout)


def _check_process_count(nproc, cuda, config):
    if cuda:
        import torch

        gpu_id = config["gpu_id"]
        listed = [g for g in (",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list))
                              else str(gpu_id)).split(",") if g.strip()]
        visible = min(len(listed), torch.cuda.device_count())
        if nproc > visible:
            raise ConfigError(f"nproc={nproc} needs one GPU per process, but gpu_id='{config['gpu_id']}' gives "
                              f"{visible} usable GPU(s) (torch sees {torch.cuda.device_count()}): list "
                              f"{nproc} GPUs, e.g. --gpu_id=\"{','.join(map(str, range(nproc)))}\", or lower nproc")
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if nproc > cores:
        raise ConfigError(f"nproc={nproc} CPU processes, but this process may use {cores} CPU core(s): "
                          f"lower nproc to at most {cores} (on CPUs each process needs a core of its own; "
                          "for GPUs set gpu_id and install a CUDA build of torch)")


def _free_port(ip, port):
    """``port`` if it can be bound on ``ip`` now, else a ConfigError; a free port when ``port`` is 0."""
    host = "127.0.0.1" if ip == "localhost" else ip
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as e:
            if port:
                raise ConfigError(f"port {port} on {ip} is in use or cannot be bound ({e.strerror}): another "
                                  "run may hold it; pass a free one with --port=<port> (or leave port unset "
                                  "on a single machine to get a free one)") from None
            raise ConfigError(f"cannot bind a port on ip={ip} ({e.strerror}): is it an address of this "
                              "machine?") from None
        return sock.getsockname()[1]


def _torchrun_plan():
    """A process started by torchrun (or any launcher setting torch's env:// variables) is one worker."""
    env = os.environ
    if not all(k in env for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return None
    world_size = int(env["WORLD_SIZE"])
    if world_size <= 1:
        return None
    import torch

    local_rank, rank = int(env["LOCAL_RANK"]), int(env["RANK"])
    return Plan(nproc=int(env.get("LOCAL_WORLD_SIZE", world_size)), world_size=world_size,
                offset=rank - local_rank, ip=env["MASTER_ADDR"], port=int(env["MASTER_PORT"]),
                cuda=torch.cuda.is_available() and bool(env.get("CUDA_VISIBLE_DEVICES", "0").strip()),
                timeout=float(env.get("RECBOLE_REVEAL_DDP_TIMEOUT", 1800)), launcher="torchrun",
                torchrun_local_rank=local_rank)


# -- the workers --------------------------------------------------------------------------------------
def _spawn(plan_, target, args, kwargs):
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    result_dir = tempfile.mkdtemp(prefix="recbole_reveal_ddp_")
    try:
        try:
            mp.spawn(_spawned_worker, args=(plan_, target, args, kwargs, result_dir), nprocs=plan_.nproc, join=True)
        except ProcessException as failure:
            raise _worker_failure(plan_, failure, result_dir) from None
        path = os.path.join(result_dir, "result.pkl")
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return pickle.load(f)
    finally:
        shutil.rmtree(result_dir, ignore_errors=True)


def _spawned_worker(local_rank, plan_, target, args, kwargs, result_dir):
    _run_worker(local_rank, plan_, target, args, kwargs, result_dir)


def _run_worker(local_rank, plan_, target, args, kwargs, result_dir):
    import torch

    rank = plan_.offset + local_rank
    patch_recbole(rank)
    if not plan_.cuda and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // plan_.nproc))   # N processes share the machine's cores
    kwargs = dict(kwargs)
    kwargs["config_dict"] = dict(kwargs.get("config_dict") or {}, **plan_.worker_config(local_rank))
    try:
        result = target(*args, **kwargs)
    except BaseException as e:
        if result_dir is not None:
            _dump(os.path.join(result_dir, f"error-rank{rank}.pkl"), (e, traceback.format_exc()))
        raise
    finally:
        dist = _dist()
        if dist is not None:
            dist.destroy_process_group()
    if rank != 0:
        return None                       # only global rank 0 reports
    if result_dir is not None:
        _dump(os.path.join(result_dir, "result.pkl"), result)
    return result


def _dump(path, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f)
    except Exception:                     # an unpicklable exception: keep its text
        with open(tmp, "wb") as f:
            e, text = obj if isinstance(obj, tuple) else (obj, "")
            pickle.dump((DistributedRunError(f"{type(e).__name__}: {e}"), text), f)
    os.replace(tmp, path)


def _worker_failure(plan_, failure, result_dir):
    """The error to raise for a failed spawn: a user error of any rank as itself, else which rank
    failed and how."""
    errors = {}
    for name in os.listdir(result_dir):
        if name.startswith("error-rank") and name.endswith(".pkl"):
            with open(os.path.join(result_dir, name), "rb") as f:
                errors[int(name[len("error-rank"):-len(".pkl")])] = pickle.load(f)
    for rank in sorted(errors):
        error, _ = errors[rank]
        if isinstance(error, RevealUserError):
            return error
    failed = plan_.offset + failure.error_index
    where = f"rank {failed} of {plan_.world_size} (pid {failure.error_pid})"
    exit_code = getattr(failure, "exit_code", None)
    if failed in errors:
        error, text = errors[failed]
        message = f"{where} failed: {type(error).__name__}: {error}\n{text.rstrip()}"
    elif exit_code is not None and exit_code < 0:
        import signal

        name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else str(-exit_code)
        message = (f"{where} was killed by signal {name}"
                   + (" (often the out-of-memory killer)" if name == "SIGKILL" else ""))
    else:
        message = f"{where} exited with code {exit_code} without a Python error"
    others = sorted(r for r in errors if r != failed)
    if others:
        message += f"\n(rank(s) {others} stopped after it: " + "; ".join(
            f"{type(errors[r][0]).__name__}: {str(errors[r][0]).splitlines()[0] if str(errors[r][0]) else ''}"
            for r in others) + ")"
    return DistributedRunError(message)


# -- RecBole patches (worker processes only) ------------------------------------------------------------
_PATCHED = {}


def patch_recbole(rank):
    """Make RecBole 1.2.1's distributed path work on CPUs and GPUs in this (worker) process; ``rank`` is
    its global rank (only rank 0 logs). Idempotent."""
    if _PATCHED:
        return
    from recbole_reveal import compat

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
        init_method = cfg.get(_INIT_KEY) or f"tcp://{cfg['ip']}:{cfg['port']}"
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
            _dist().barrier()          # rank 0 may still be writing the best checkpoint
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

        dist = _dist()
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
