"""What the processes of a distributed run agree on: who this process is (``global_rank``,
``is_main_process``) and the collectives AVL and the patched trainer use (``all_reduce_weighted_mean``,
``broadcast_object``). Light: torch is imported inside the functions, and each is a no-op without a
running process group (docs/distributed.md)."""


# -- who am I ------------------------------------------------------------------------------------
def process_group():
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
    dist = process_group()
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
    dist = process_group()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_collective_device(config))
    return box[0]


def _collective_device(config):
    device = config["device"]
    return device if device.type == "cuda" else None


def uses_cuda(config):
    """Whether a distributed run of ``config`` trains on GPUs (RecBole: a non-empty ``gpu_id`` and CUDA)."""
    import torch

    gpu_id = config["gpu_id"]
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id or "")
    use_gpu = config["use_gpu"] if "use_gpu" in config else True
    return bool(gpu_id.strip()) and use_gpu is not False and torch.cuda.is_available()
