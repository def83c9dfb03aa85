"""Default optimizer and learning-rate schedule of every trainer."""

import math

import torch


def build_optimizer(parameters, args):
    """``--optimizer`` (sgd, adam, adamw) with ``--lr``, ``--weight_decay`` and SGD's ``--momentum``.

    PyTorch's fused implementation when every parameter is a floating-point
    tensor on the CPU or a CUDA device (``fused=True``).

    Args:
        parameters: iterable of ``torch.nn.Parameter``, or of param-group dicts
            (``{"params": [...], "weight_decay": 0.0}``); frozen parameters
            (``requires_grad=False``) are left out.
        args: the resolved config namespace.
    """
    items = list(parameters)
    if items and isinstance(items[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in items]
        params = [g for g in groups if g["params"]]
    else:
        params = [p for p in items if p.requires_grad]
    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    # PyTorch's fused kernels (CPU and CUDA): one kernel per step, and they skip an update on the
    # device when told the loss was non-finite, without a host sync (see base.loop.nonfinite).
    fused = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, fused=fused)
    cls = torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=args.lr, weight_decay=args.weight_decay, fused=fused)


def decay_groups(model, no_decay_names):
    """Two param groups of ``model``: with weight decay, and without for ``no_decay_names``.

    The second group has ``"weight_decay": 0.0``; the first inherits the
    optimizer's ``--weight_decay``. Empty groups are dropped by :func:`build_optimizer`.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if name in no_decay_names else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def layer_decay_groups(model, no_decay_names, layer_of, num_layers, lr, decay):
    """Param groups with layer-wise learning-rate decay (BEiT, Bao et al. 2022; the MAE fine-tuning recipe).

    A parameter of layer ``i = layer_of(name)`` (0: the embeddings, ``num_layers + 1``: the last
    norm and the head) gets ``lr * decay ** (num_layers + 1 - i)``, so the head trains at ``lr`` and
    each block below at ``decay`` times the one above. Weight decay is off for ``no_decay_names``
    as in :func:`decay_groups`. Each group records its ``"layer"`` and ``"lr_scale"``.
    """
    groups = {}
    for name, param in model.named_parameters():
        layer, no_decay = layer_of(name), name in no_decay_names
        group = groups.setdefault(
            (layer, no_decay),
            {
                "params": [],
                "layer": layer,
                "lr_scale": decay ** (num_layers + 1 - layer),
                "lr": lr * decay ** (num_layers + 1 - layer),
                **({"weight_decay": 0.0} if no_decay else {}),
            },
        )
        group["params"].append(param)
    # The head's group first: param_groups[0]["lr"] is what the log and metrics.csv report as the lr.
    return [groups[key] for key in sorted(groups, key=lambda k: (-k[0], k[1]))]


class WarmupCosine:
    """LR factor of optimizer step ``s``: linear warmup, then cosine decay to 0 at ``total``.

    ``1e-3 + (1 - 1e-3) * s / warmup`` for ``s < warmup``, then
    ``0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))``, held at 0 past
    ``total``. A closed form of the step (not a recursion), so a resumed run
    can change ``total`` (more epochs, another batch size) and continue from
    its step with no jump back up and no second warmup. Recipe: Loshchilov &
    Hutter, "SGDR" (2017) for the cosine; Goyal et al., "Accurate, Large
    Minibatch SGD" (2017) for the warmup.

    Its attributes are plain numbers, so ``LambdaLR.state_dict`` saves them.
    """

    def __init__(self, warmup, total):
        self.warmup, self.total = int(warmup), int(total)

    def __call__(self, step):
        if step < self.warmup:
            return 1e-3 + (1 - 1e-3) * step / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))


def warmup_used(warmup_steps, total_steps):
    """The warmup a run of ``total_steps`` optimizer steps gets for ``--warmup_steps``: at most half of it.

    A longer warmup would leave no room for the decay (at ``total_steps - 1`` the
    whole run is warmup and the LR falls to 0 only after the last step), so it
    is cut to ``total_steps // 2``; :func:`warmup_note` says so.
    """
    return max(0, min(int(warmup_steps), int(total_steps) // 2))


def build_scheduler(optimizer, args, total_steps):
    """``LambdaLR`` of :class:`WarmupCosine` over ``total_steps``, stepped once per optimizer step.

    The warmup is ``--warmup_steps``, cut to half the run (:func:`warmup_used`).
    Returns ``None`` for ``--lr_scheduler none``.
    """
    if args.lr_scheduler == "none":
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup_used(args.warmup_steps, total_steps), total_steps)
    )


def warmup_note(scheduler, warmup_steps):
    """One line saying that ``scheduler`` warms up for fewer steps than ``--warmup_steps`` asked, else ``None``.

    Reads the :class:`WarmupCosine` the scheduler holds, so it tells the warmup
    a run really uses (also one loaded from a checkpoint or retargeted on resume).
    """
    lambdas = [f for f in getattr(scheduler, "lr_lambdas", []) if isinstance(f, WarmupCosine)]
    if not lambdas or lambdas[0].warmup == warmup_steps:
        return None
    f = lambdas[0]
    return (
        f"--warmup_steps {warmup_steps} is more than half of the run's {f.total} optimizer steps: "
        f"warming up for {f.warmup} steps, then cosine decay"
    )


def retarget_schedule(scheduler, total_steps, warmup_steps):
    """Point every :class:`WarmupCosine` of ``scheduler`` at a new length and set the LR for its step.

    Returns:
        ``(old_total, new_total)`` of the first schedule (equal when nothing changed),
        or ``None`` when ``scheduler`` has no :class:`WarmupCosine`.
    """
    lambdas = [f for f in getattr(scheduler, "lr_lambdas", []) if isinstance(f, WarmupCosine)]
    if not lambdas:
        return None
    old = lambdas[0].total
    for f in lambdas:
        f.total, f.warmup = int(total_steps), warmup_used(warmup_steps, total_steps)
    set_scheduled_lr(scheduler)
    return old, int(total_steps)


def set_scheduled_lr(scheduler):
    """Set each param group's ``lr`` to ``base_lr * factor(step)`` for the scheduler's current step."""
    step = scheduler.last_epoch
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
