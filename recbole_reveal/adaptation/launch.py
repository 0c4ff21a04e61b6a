"""One run on N processes: RecBole 1.2.1's own distributed path (torch DDP), on GPUs and on CPUs.

What stays RecBole's: a config that holds ``local_rank`` joins a process group when it is built; the
data loaders shard every epoch with a ``DistributedSampler``, each rank taking
``train_batch_size // world_size`` rows a step, so a step of N processes trains on the same
``train_batch_size`` rows as a step of one process (the *global batch*); the trainer wraps the model in
``DistributedDataParallel``, whose backward averages the gradients over the ranks; the best
checkpoint is written by each machine's local rank 0.

:func:`plan_from_config` / :meth:`Plan.run` start ``nproc`` worker processes (torch.multiprocessing
spawn, as RecBole's ``run_recboles``), each patched by :func:`recbole_reveal.adaptation.ddp.patch_recbole`
and running the same entry function; global rank 0's return value comes back; a rank that fails ends
the others and its error is raised in the caller. The request is checked before anything starts:
process count against GPUs or CPU cores, multi-machine keys, a free port. A process started by
``torchrun`` joins through ``env://`` and runs in place. What the ranks agree on afterwards (AVL's
means, who reports) is :mod:`recbole_reveal.infra.collectives` (docs/distributed.md).
"""

import os
import pickle
import shutil
import socket
import tempfile
import traceback
from dataclasses import dataclass, field

from recbole_reveal.adaptation.ddp import INIT_KEY, patch_recbole
from recbole_reveal.infra.collectives import process_group, uses_cuda
from recbole_reveal.infra.errors import ConfigError, RevealUserError
from recbole_reveal.infra.files import atomic_open

# RecBole's distributed config keys, plus how long a collective may wait
DIST_KEYS = ("nproc", "world_size", "offset", "ip", "port", "ddp_timeout")


class DistributedRunError(RuntimeError):
    """A worker process failed (an exception, a signal, an exit code); names the rank and the cause."""


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
            INIT_KEY: "env://" if self.launcher == "torchrun" else f"tcp://{self.ip}:{self.port}",
        }

    def run(self, target, *args, config_dict=None, **kwargs):
        """``target(*args, config_dict=..., **kwargs)`` on every rank of this machine; global rank 0's
        return value (None on a machine without rank 0)."""
        if self.launcher == "torchrun":
            return _run_worker(self.torchrun_local_rank, self, target, args, dict(kwargs, config_dict=config_dict),
                               result_dir=None)
        return _spawn(self, target, args, dict(kwargs, config_dict=config_dict))


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
        dist = process_group()
        if dist is not None:
            dist.destroy_process_group()
    if rank != 0:
        return None                       # only global rank 0 reports
    if result_dir is not None:
        _dump(os.path.join(result_dir, "result.pkl"), result)
    return result


def _dump(path, obj):
    try:
        with atomic_open(path, "wb", fsync=False) as f:
            pickle.dump(obj, f)
    except Exception:                     # an unpicklable exception: keep its text
        e, text = obj if isinstance(obj, tuple) else (obj, "")
        with atomic_open(path, "wb", fsync=False) as f:
            pickle.dump((DistributedRunError(f"{type(e).__name__}: {e}"), text), f)


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
