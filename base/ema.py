"""Exponential moving average (EMA) of a model's weights, as a part of the trainer's state tree.

After every optimizer step ``ema = decay * ema + (1 - decay) * weights`` for
every parameter and buffer (the first update copies the weights). This is
Polyak averaging with exponential weights, as in torchvision's classification
reference recipe and timm's ``ModelEmaV2``; the arithmetic is PyTorch's own
``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``.
"""
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class ModelEMA:
    """An EMA copy of ``model`` (same device, same state-dict keys).

    Args:
        model: the ``nn.Module`` being trained; copied once here, so build the
            EMA before ``model.compile()`` or DDP wrapping.
        decay: float in (0, 1); each update keeps this share of the average.
            With ``decay`` d the average spans about ``1 / (1 - d)`` steps.

    Attributes:
        module: the averaged ``nn.Module`` (validate or export it like the model).
    """

    def __init__(self, model, decay):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        # use_buffers: BatchNorm running statistics are averaged too, so the EMA model is usable as is.
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.averaged.eval()

    @property
    def module(self):
        return self.averaged.module

    @property
    def num_updates(self):
        """Updates applied so far (int)."""
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def update(self, model):
        """Fold the current weights of ``model`` into the average."""
        self.averaged.update_parameters(model)

    def state_dict(self):
        """``{"model": the averaged weights (the model's keys), "num_updates": int, "decay": float}``."""
        return {"model": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned (the decay stays the configured one)."""
        self.module.load_state_dict(state["model"])
        self.averaged.n_averaged.fill_(int(state["num_updates"]))
