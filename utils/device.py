"""Device selection from ``--gpu_devices``."""
import torch

from base.config import ConfigError


def select_device(spec):
    """Resolve ``--gpu_devices`` to a ``torch.device``.

    Args:
        spec: ``None``/``""``/``"auto"`` (first CUDA device if any, else CPU),
            ``"cpu"``, or a CUDA device as PyTorch users write it: ``"0"``,
            ``"cuda"`` (device 0), ``"cuda:1"``, ``"gpu"``.

    Raises:
        ConfigError: ``spec`` is none of these, or names a GPU that is not present.
    """
    if spec in (None, "", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    text = str(spec).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    number = text.split(":", 1)[1] if text.startswith(("cuda:", "gpu:")) else "0" if text in ("cuda", "gpu") else text
    try:
        index = int(number)
    except ValueError:
        raise ConfigError(f"--gpu_devices={spec!r}: expected 'cpu', 'cuda', 'cuda:N' or a GPU id such as 0") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not 0 <= index < count:
        raise ConfigError(f"--gpu_devices={spec!r}: no such GPU ({count} CUDA device(s) visible); "
                          f"use --gpu_devices cpu")
    return torch.device(f"cuda:{index}")
