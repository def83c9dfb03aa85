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
        self.updates = 0  # a Python counter: reading AveragedModel.n_averaged would sync the GPU
        # use_buffers: BatchNorm running statistics are averaged too, so the EMA model is usable as is.
        self.averaged = AveragedModel(model, use_buffers=True)
        self.averaged.eval()

    def current_decay(self):
        """The ``d`` of the next update: ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @property
    def module(self):
        return self.averaged.module

    @property
    def num_updates(self):
        """Updates applied so far (int)."""
        return self.updates

    @torch.no_grad()
    def update(self, model):
        """Fold the current weights of ``model`` into the average.

        Not ``AveragedModel.update_parameters``: it tests its tensor counter
        with ``==``, a host sync per step on a GPU. One fused ``lerp`` over the
        floating-point tensors; integer buffers (BatchNorm's ``num_batches_tracked``)
        follow the model.
        """
        ema = [*self.module.parameters(), *self.module.buffers()]
        new = [*model.parameters(), *model.buffers()]
        floats = [(e, n.detach()) for e, n in zip(ema, new) if e.is_floating_point() and self.updates > 0]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [n for _, n in floats], 1 - self.current_decay())
        for e, n in zip(ema, new):
            if not (e.is_floating_point() and self.updates > 0):  # the first update copies
                e.copy_(n)
        self.updates += 1

    def state_dict(self):
        """``{"model": the averaged weights (the model's keys), "num_updates": int, "decay": float}``."""
        return {"model": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned (the decay stays the configured one)."""
        self.module.load_state_dict(state["model"])
        self.updates = int(state["num_updates"])
        self.averaged.n_averaged.fill_(self.updates)
