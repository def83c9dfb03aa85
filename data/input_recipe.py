"""The input recipe a model card records: how an image file becomes the model's input, without this code.

A card's ``"input"`` entry (written by :func:`input_recipe`, read by :func:`card_input`)::

    {"color": "RGB" | "L",                 # the file decoded to 8-bit RGB or luma (data.images.to_8bit)
     "transform": {"resize": "shorter_side" | "square" | "exact", "resize_to": int | [H, W],
                   "center_crop": int | None, "interpolation": "bilinear", "antialias": true,
                   "backend": "torch"},   # data.transforms.describe_eval / describe_resize
     "scale": 255, "mean": [...], "std": [...],       # base.loop.input_stage.InputStage.describe
     "layout": "NCHW", "dtype": "float32",
     "formula": "(pixels / scale - mean) / std, per channel"}

``backend`` says which library resized the evaluation images: ``"torch"``, torchvision's
antialiased bilinear kernels on uint8 ``(C, H, W)`` tensors (every pipeline makes a decoded
file a tensor first). Pillow's resize differs by a grey level here and there, so a
reimplementation should use the same kernels.

Cards written before the recipe existed are read here and nowhere else (:func:`card_input`):
a classification card with ``"normalize": "(x / max_value - 0.5) / 0.5"`` and
``input_shape`` ``[C, H, W]`` stands for "resize to H x W (torch, antialiased), mean 0.5,
std 0.5"; an empty card (segmentation runs of that time) has no recipe (``None``).
"""

from data import transforms

#: The one normalisation every classification card said before the recipe existed.
OLD_NORMALIZE = "(x / max_value - 0.5) / 0.5"
COLORS = {1: "L", 3: "RGB"}
RESIZES = ("shorter_side", "square", "exact")
BACKENDS = ("torch",)


def input_recipe(channels, transform, statistics):
    """The card's ``"input"`` entry (module docstring), JSON-able.

    Args:
        channels: ``C`` of the model's input, 1 or 3.
        transform: the evaluation transform's facts (:func:`data.transforms.describe_eval` or
            :func:`data.transforms.describe_resize`, with ``"backend"``).
        statistics: ``{"scale": 255, "mean": [...], "std": [...]}`` (:meth:`base.loop.input_stage.InputStage.describe`).
    """
    return {
        "color": COLORS[int(channels)],
        "transform": dict(transform),
        "scale": int(statistics["scale"]),
        "mean": [float(v) for v in statistics["mean"]],
        "std": [float(v) for v in statistics["std"]],
        "layout": "NCHW",
        "dtype": "float32",
        "formula": "(pixels / scale - mean) / std, per channel",
    }


def card_input(card):
    """The input recipe (module docstring) of ``card``, a checkpoint's model card; old cards included.

    Returns:
        the recipe dict, or ``None`` for a card that records none and is not an old
        classification card (an empty card: the caller keeps its own older behaviour).

    Raises:
        ValueError: the card's recipe is not one this code can rebuild (unknown colour, resize,
            backend, scale, or statistics that do not fit the channels); the message says which.
    """
    if "input" in card:
        recipe = card["input"]
    elif "normalize" in card:
        recipe = _old_classification_recipe(card)
    else:
        return None
    _check(recipe)
    return recipe


def _old_classification_recipe(card):
    """The recipe a card of the ``"normalize"`` scheme stood for (see the module docstring)."""
    shape = card.get("input_shape")
    if card["normalize"] != OLD_NORMALIZE or len(shape or ()) != 3 or shape[0] not in COLORS:
        raise ValueError(
            f"input {shape} normalized as {card['normalize']!r}; this code reads (1 or 3, H, W) "
            f"inputs normalized as {OLD_NORMALIZE!r}"
        )
    channels, height, width = (int(n) for n in shape)
    # predict.py then: decode, resize the uint8 tensor to H x W (antialiased) when it differs, x / 255, 0.5 / 0.5.
    transform = {**transforms.describe_resize((height, width)), "backend": "torch"}
    return input_recipe(channels, transform, {"scale": 255, "mean": [0.5], "std": [0.5]})


def _check(recipe):
    """Raise ``ValueError`` naming the first entry of ``recipe`` this code cannot rebuild."""
    if not isinstance(recipe, dict):
        raise ValueError(f"its input recipe is a {type(recipe).__name__}, expected an object")
    transform = recipe.get("transform") or {}
    channels = {v: k for k, v in COLORS.items()}.get(recipe.get("color"))
    problems = [
        (channels is None, f"color {recipe.get('color')!r} (expected 'RGB' or 'L')"),
        (transform.get("resize") not in RESIZES, f"resize {transform.get('resize')!r} (expected one of {RESIZES})"),
        (
            transform.get("backend") not in BACKENDS,
            f"backend {transform.get('backend')!r} (expected one of {BACKENDS})",
        ),
        (recipe.get("scale") != 255, f"scale {recipe.get('scale')!r} (expected 255: 8-bit pixels)"),
        (
            len(recipe.get("mean") or ()) != len(recipe.get("std") or ())
            or len(recipe.get("mean") or ()) not in (1, channels),
            f"mean {recipe.get('mean')} / std {recipe.get('std')} for {channels} channel(s)",
        ),
        (min(recipe.get("std") or [0]) <= 0, f"std {recipe.get('std')} (expected values > 0)"),
    ]
    for bad, what in problems:
        if bad:
            raise ValueError(f"its input recipe has {what}")
