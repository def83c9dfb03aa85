"""Exponential moving average (EMA) of a model's weights, as a part of the trainer's state tree.

After every optimizer step ``ema = d * ema + (1 - d) * weights`` for every
parameter and buffer, where the ``n``-th update (from 0) uses
``d = min(decay, (1 + n) / (10 + n))``: the first update copies the weights and
early ones follow them closely, so a short run's EMA is not stuck near the
random init (the warmup of TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``). This is Polyak averaging with exponential weights, as in
torchvision's classification reference recipe and timm's ``ModelEmaV2``; the
copy and bookkeeping are PyTorch's ``torch.optim.swa_utils.AveragedModel``.
"""
import torch
from torch.optim.swa_utils import AveragedModel


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
        self.updates = 0  # a Python copy of AveragedModel.n_averaged: reading that tensor would sync the GPU
        # use_buffers: BatchNorm running statistics are averaged too, so the EMA model is usable as is.
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.eval()

    def current_decay(self):
        """The ``d`` of the next update: ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def _average(self, ema_tensors, model_tensors, _num_averaged):
        keep = self.current_decay()
        for ema, new in zip(ema_tensors, model_tensors):
            if ema.is_floating_point():
                ema.lerp_(new, 1 - keep)
            else:  # integer buffers (BatchNorm's num_batches_tracked): follow the model
                ema.copy_(new)

    @property
    def module(self):
        return self.averaged.module

    @property
    def num_updates(self):
        """Updates applied so far (int)."""
        return self.updates

    @torch.no_grad()
    def update(self, model):
        """Fold the current weights of ``model`` into the average."""
        self.averaged.update_parameters(model)
        self.updates += 1

    def state_dict(self):
        """``{"model": the averaged weights (the model's keys), "num_updates": int, "decay": float}``."""
        return {"model": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned (the decay stays the configured one)."""
        self.module.load_state_dict(state["model"])
        self.updates = int(state["num_updates"])
        self.averaged.n_averaged.fill_(self.updates)
