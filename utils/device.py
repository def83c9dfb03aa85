"""Device selection from ``--gpu_devices``."""
import torch

from base.config import ConfigError


def select_device(spec):
    """Resolve ``--gpu_devices`` to a ``torch.device``.

    Args:
        spec: ``None``/``""`` (first CUDA device if any, else CPU), ``"cpu"``,
            or a CUDA device id such as ``"0"``.

    Raises:
        ConfigError: ``spec`` is not ``cpu`` or an integer id, or names a GPU
            that is not present.
    """
    if spec in (None, "", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if str(spec).lower() == "cpu":
        return torch.device("cpu")
    try:
        index = int(spec)
    except ValueError:
        raise ConfigError(f"--gpu_devices={spec!r}: expected 'cpu' or a GPU id such as 0") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not 0 <= index < count:
        raise ConfigError(f"--gpu_devices={spec!r}: no such GPU ({count} CUDA device(s) visible)")
    return torch.device(f"cuda:{index}")
