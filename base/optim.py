"""Default optimizer and learning-rate schedule of every trainer."""
import torch


def build_optimizer(parameters, args):
    """``--optimizer`` (sgd, adam, adamw) with ``--lr``, ``--weight_decay`` and SGD's ``--momentum``.

    Args:
        parameters: iterable of ``torch.nn.Parameter``; frozen ones (``requires_grad=False``) are left out.
        args: the resolved config namespace.
    """
    params = [p for p in parameters if p.requires_grad]
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    cls = torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=args.lr, weight_decay=args.weight_decay)


def build_scheduler(optimizer, args, total_steps):
    """Linear warmup over ``--warmup_steps``, then cosine decay to 0 at ``total_steps``.

    Stepped once per optimizer step. Recipe: Loshchilov & Hutter, "SGDR" (2017)
    for the cosine; Goyal et al., "Accurate, Large Minibatch SGD" (2017) for the
    warmup; built from ``torch.optim.lr_scheduler`` parts. Returns ``None`` for
    ``--lr_scheduler none``.
    """
    sched = torch.optim.lr_scheduler
    if args.lr_scheduler == "none":
        return None
    warmup = min(args.warmup_steps, total_steps - 1)
    cosine = sched.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup))
    if warmup <= 0:
        return cosine
    ramp = sched.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
