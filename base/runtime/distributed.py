"""Data-parallel training across processes with ``torch.distributed`` (DDP), as ``torchrun`` starts it.

    torchrun --standalone --nproc_per_node=4 trainer_vit.py ...        # 4 GPUs of one machine
    python trainer_vit.py --gpu_devices 0,1,2,3 ...                    # the same, torchrun started for you
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 trainer_vit.py ...

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` in each process it starts; the trainer reads
them (:func:`init_from_env`). Without them, or with ``WORLD_SIZE=1``, every
function here is the single-process identity. The helpers below are
collectives: every rank must call them, in the same order.
"""

import os
import sys

import torch
import torch.distributed as dist

from base.errors import ConfigError


def env_world_size():
    """``WORLD_SIZE`` as torchrun set it (1 when unset): known before the process group starts."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_distributed():
    """True when a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size():
    """Processes in the run (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def local_world_size():
    """Processes of the run on this node: torchrun's ``LOCAL_WORLD_SIZE`` (1 when not set)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_main():
    """True on the process that writes the run folder (global rank 0)."""
    return rank() == 0


def init_from_env(device):
    """Start the process group torchrun described in the environment, if any and not started yet.

    Args:
        device: this process's ``torch.device`` (see :func:`base.runtime.device.select_device`):
            NCCL for CUDA devices, gloo for CPU.

    Returns:
        True when this call started the group (the caller then ends it with
        :func:`shutdown`), False when there is none to start or it was running already.
    """
    if env_world_size() <= 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return True


def shutdown():
    """End the process group started by :func:`init_from_env`."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _comm_device():
    # NCCL moves CUDA tensors only; gloo, CPU tensors.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values):
    """Sum a list of numbers element-wise over all ranks; returns a list of Python floats (float64 on the wire).

    Exact for integers below 2**53 (sample counts, hits, pixel counts).
    """
    return _all_reduce(values, "SUM")


def all_reduce_max(values):
    """The element-wise maximum of a list of numbers over all ranks, as Python floats."""
    return _all_reduce(values, "MAX")


def _all_reduce(values, op):
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    return tensor.tolist()


def any_rank(flag):
    """True on every rank when ``flag`` is true on at least one: a decision all ranks take together."""
    if not is_distributed():
        return bool(flag)
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def all_gather_object(obj):
    """Every rank's ``obj`` (picklable), as a list indexed by rank."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_rows(*tensors):
    """Each of ``tensors`` (CPU, any row count per rank) concatenated over the ranks along dim 0, in rank order.

    For metrics that need every sample's values, not sums (mAP, AUC): every process gets the whole split's
    rows, exactly (the values are sent, not reduced). ``gather_rows(scores, targets)`` returns
    ``(all_scores, all_targets)``; a rank with no rows passes empty tensors of the right trailing shape.
    A collective: every rank calls it. Without a process group, the tensors themselves.
    """
    if not is_distributed():
        return tensors
    parts = all_gather_object(tensors)  # pickled: rows may differ per rank, no padding needed
    return tuple(torch.cat([part[i] for part in parts]) for i in range(len(tensors)))


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier():
    """Wait until every rank gets here."""
    if is_distributed():
        dist.barrier()


def combine_metrics(metrics, count):
    """One validation result from every rank's result over its shard of a split.

    Args:
        metrics: ``{name: float}`` this rank measured.
        count: samples in this rank's shard (int).

    Returns:
        The same result on every rank: the ranks' values when they are all equal
        (a meter such as :class:`utils.metrics.ClassificationMeter` already summed
        its counts over the ranks), else each metric averaged over the ranks
        weighted by ``count``, ranks with no samples left out. The latter is
        exact for per-sample means (loss, accuracy); a metric that is not one
        must be computed from sums reduced with :func:`all_reduce_sum`.
    """
    results = all_gather_object((metrics, count))
    if all(m == results[0][0] for m, _ in results):
        return results[0][0]
    results = [(m, n) for m, n in results if n > 0]
    total = sum(n for _, n in results)
    return {k: sum(m[k] * n for m, n in results) / total for k in results[0][0]}


def wrap_model(model, device, sync_bn=False, find_unused_parameters=False):
    """``model`` inside ``DistributedDataParallel`` (the identity when not distributed).

    Args:
        sync_bn: convert BatchNorm layers to ``SyncBatchNorm`` first (their
            parameters and buffers are kept, so an optimizer built on them still holds).

    Raises:
        ConfigError: ``sync_bn`` on CPU processes (PyTorch's SyncBatchNorm runs on GPUs only).
    """
    if not is_distributed():
        return model
    if sync_bn:
        if device.type != "cuda":
            raise ConfigError(
                f"--sync_bn: SyncBatchNorm runs on CUDA devices only; these processes run on {device.type}"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def parse_devices(spec):
    """The device list of ``--gpu_devices`` naming one process per entry (``"0,1"``, ``"cpu,cpu"``), else None."""
    if spec is None or "," not in str(spec):
        return None
    return [part.strip().lower() for part in str(spec).split(",")]


def launch_command(spec, script, argv):
    """The ``torchrun`` command that runs ``script argv`` once per device of ``--gpu_devices spec``.

    Each process takes its device from the list by its local rank (see
    :func:`base.runtime.device.select_device`). ``--standalone`` picks a free port on this machine.

    Raises:
        ConfigError: an empty entry, or CPU and GPUs mixed in the list.
    """
    devices = parse_devices(spec)
    if not devices or any(not d for d in devices) or ("cpu" in devices and set(devices) != {"cpu"}):
        raise ConfigError(
            f"--gpu_devices={spec!r}: expected GPU ids such as 0,1,2,3 (or cpu,cpu for CPU processes), one process each"
        )
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={len(devices)}",
        script,
        *argv,
    ]
