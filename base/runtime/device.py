"""Device selection from ``--gpu_devices``."""

import os

import torch

from base.errors import ConfigError


def select_device(spec):
    """Resolve ``--gpu_devices`` to this process's ``torch.device``.

    Args:
        spec: ``None``/``""``/``"auto"`` (first CUDA device if any, else CPU),
            ``"cpu"``, or a CUDA device as PyTorch users write it: ``"0"``,
            ``"cuda"`` (device 0), ``"cuda:1"``, ``"gpu"``; or a list, one
            process per entry (``"0,1,2,3"``, ``"cpu,cpu"``: see :mod:`base.runtime.distributed`).

    Under ``torchrun`` (``LOCAL_RANK`` set) a process takes the list's entry
    of its local rank, or without a list GPU ``LOCAL_RANK`` (or the CPU).

    Raises:
        ConfigError: ``spec`` is none of these, names a GPU that is not
            present, or gives fewer devices than torchrun started processes here.
    """
    local_rank = os.environ.get("LOCAL_RANK")
    text = "" if spec is None else str(spec).strip().lower()
    if "," in text:
        entries = [part.strip() for part in text.split(",")]
        if local_rank is None:  # the launching process: it only checks the list
            for entry in entries:
                _one_device(entry, spec)
            return torch.device("cpu" if entries[0] == "cpu" else "cuda:0")
        if int(local_rank) >= len(entries):
            raise ConfigError(
                f"--gpu_devices={spec!r}: {len(entries)} devices for local rank {local_rank}; "
                f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes on this node"
            )
        return _one_device(entries[int(local_rank)], spec)
    if local_rank is not None and text in ("", "auto", "cuda", "gpu") and torch.cuda.is_available():
        return _one_device(local_rank, spec)
    if local_rank is not None and text not in ("", "auto", "cpu") and int(os.environ.get("LOCAL_WORLD_SIZE", 1)) > 1:
        raise ConfigError(
            f"--gpu_devices={spec!r} names one GPU for the {os.environ['LOCAL_WORLD_SIZE']} "
            "processes torchrun started on this node: list one per process (0,1,...) or leave it unset"
        )
    return _one_device(text, spec)


def _one_device(text, spec):
    if text in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    number = text.split(":", 1)[1] if text.startswith(("cuda:", "gpu:")) else "0" if text in ("cuda", "gpu") else text
    try:
        index = int(number)
    except ValueError:
        raise ConfigError(
            f"--gpu_devices={spec!r}: expected 'cpu', 'cuda', 'cuda:N', a GPU id such as 0, "
            "or a list of ids such as 0,1"
        ) from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not 0 <= index < count:
        raise ConfigError(
            f"--gpu_devices={spec!r}: no such GPU ({count} CUDA device(s) visible); use --gpu_devices cpu"
        )
    return torch.device(f"cuda:{index}")
