"""Parameter counting."""


def count_parameters(model, trainable_only=False):
    """Number of parameters (elements, not bytes) of ``model``.

    Args:
        model: a ``torch.nn.Module``.
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def format_count(n):
    """``1234567 -> '1.23M'``; plain digits below one thousand."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
