"""Image classifiers from torchvision and timm, looked up by name through :func:`build_zoo_model`.

Every model maps ``images: float32 (N, in_chans, H, W)`` to ``logits: float32 (N, num_classes)``.
All are randomly initialised (``weights=None``, ``pretrained=False``): nothing is downloaded; start from
saved weights with :func:`load_pretrained` (:mod:`model.pretrained`), or from the published ones with
:func:`model.hub.load_published_weights`. Names are :data:`ZOO_MODELS` plus ``timm/<name>``
for any ``timm.list_models()`` name.

Input sizes (:func:`image_size_problem` checks them at parse time):
    ``vit_*``: exactly ``image_size x image_size`` (torchvision asserts it), ``image_size`` a multiple
    of ``patch_size`` and >= it. ``swin_t``: any H, W >= 4 (its 4x4 patch embedding); torchvision pads
    each stage to the 7x7 window and to even sizes before patch merging, so 224 needs no padding and
    small sizes such as 32 or 64 run on mostly padded windows. ``resnet*``: any size (at 32 and below
    the last stage is 1x1, which BatchNorm trains on only with two or more images a batch: the loop
    leaves out a last batch of one). ``timm/*``: whatever the model takes;
    ``img_size=image_size`` is passed where it is accepted (not checked before the build).
"""

import fnmatch
import math

from torch import nn

from model.pretrained import load_pretrained  # re-exported: the zoo's models start from saved weights with it

__all__ = [
    "MIN_IMAGE_SIZE",
    "VIT_MODELS",
    "ZOO_MODELS",
    "build_zoo_model",
    "classifier_head",
    "image_size_problem",
    "load_pretrained",
    "no_weight_decay_names",
    "vit_layer_id",
    "vit_num_layers",
]

# (layers, heads, hidden, mlp): Ti and S from DeiT (Touvron et al. 2021), B from ViT (Dosovitskiy et al. 2021)
_VIT_CONFIGS = {"vit_ti_16": (12, 3, 192, 768), "vit_s_16": (12, 6, 384, 1536), "vit_b_16": (12, 12, 768, 3072)}
#: Smallest side H = W each model trains on (measured with a CPU training step on a batch of two; the
#: loop never trains on a batch of one, see base.loop.state.trained_samples): Swin needs one 4x4 patch.
#: ResNets take any size. ViTs: see image_size_problem.
MIN_IMAGE_SIZE = {"swin_t": 4}
# Parameters torchvision names that the ViT recipe keeps out of weight decay although they are not 1-D.
_NO_DECAY_LEAVES = {"class_token", "pos_embedding", "relative_position_bias_table"}


def _refuse_drop_path(name, drop_path):
    if drop_path > 0:
        raise ValueError(
            f"{name} has no stochastic depth: drop_path={drop_path} must be 0 (swin_t and timm/ models take it)"
        )


def _vit(name, num_classes, in_chans, image_size, patch_size, drop_path, dropout):
    from torchvision import models as tv  # here, not at import: --help should not pay for torchvision

    layers, heads, hidden, mlp = _VIT_CONFIGS[name]
    if patch_size <= 0 or image_size % patch_size:
        raise ValueError(f"{name}: image_size={image_size} must be a multiple of patch_size={patch_size}")
    _refuse_drop_path(name, drop_path)
    net = tv.VisionTransformer(
        image_size, patch_size, layers, heads, hidden, mlp, dropout=dropout, num_classes=num_classes
    )
    if in_chans != 3:  # a new patch embedding for in_chans channels, initialised as torchvision does
        net.conv_proj = nn.Conv2d(in_chans, hidden, patch_size, patch_size)
        nn.init.trunc_normal_(net.conv_proj.weight, std=math.sqrt(1 / (in_chans * patch_size**2)))
        nn.init.zeros_(net.conv_proj.bias)
    return net


def _swin_t(name, num_classes, in_chans, image_size, patch_size, drop_path, dropout):
    from torchvision import models as tv  # here, not at import: --help should not pay for torchvision

    if image_size < MIN_IMAGE_SIZE[name]:
        raise ValueError(
            f"{name}: image_size={image_size} is too small; Swin needs H and W >= 4 "
            f"(its 4x4 patch embedding; 224 runs without padding)"
        )
    # The class, not tv.swin_t(): that factory fixes stochastic_depth_prob=0.2 and refuses another value.
    net = tv.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=[7, 7],
        dropout=dropout,
        stochastic_depth_prob=drop_path,
        num_classes=num_classes,
    )
    if in_chans != 3:  # torchvision leaves this conv at PyTorch's default init, so a fresh one matches
        net.features[0][0] = nn.Conv2d(in_chans, 96, kernel_size=4, stride=4)
    return net


def _resnet(name, num_classes, in_chans, image_size, patch_size, drop_path, dropout):
    from torchvision import models as tv  # here, not at import: --help should not pay for torchvision

    _refuse_drop_path(name, drop_path)
    net = getattr(tv, name)(weights=None, num_classes=num_classes)
    if in_chans != 3:  # same shape and init as torchvision's stem conv
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    if dropout > 0:  # the head's keys become fc.1.weight / fc.1.bias
        net.fc = nn.Sequential(nn.Dropout(dropout), net.fc)
    return net


def _timm(name, num_classes, in_chans, image_size, patch_size, drop_path, dropout):
    import timm  # here, not at the top: only timm/ names pay for importing it

    if not timm.is_model(name):
        raise KeyError(f"unknown timm model {name!r}; see timm.list_models()")
    kwargs = {
        "pretrained": False,
        "num_classes": num_classes,
        "in_chans": in_chans,
        "drop_rate": dropout,
        "drop_path_rate": drop_path,
    }
    try:
        return timm.create_model(name, img_size=image_size, **kwargs)
    except TypeError as exc:  # convnets (ResNet, MobileNet, ...) have no img_size argument
        if "img_size" not in str(exc):
            raise ValueError(f"timm/{name}: {exc}") from None
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:  # e.g. a model without drop_path_rate
        raise ValueError(f"timm/{name}: {exc}") from None


# name -> builder(name, num_classes, in_chans, image_size, patch_size, drop_path, dropout) -> nn.Module
ZOO_MODELS = {**dict.fromkeys(_VIT_CONFIGS, _vit), "swin_t": _swin_t, "resnet18": _resnet, "resnet50": _resnet}


def build_zoo_model(model_type, num_classes, in_chans=3, image_size=224, patch_size=16, drop_path=0.0, dropout=0.0):
    """Build ``model_type`` (a :data:`ZOO_MODELS` name or ``timm/<name>``), randomly initialised.

    Args:
        num_classes: number of output logits.
        in_chans: image channels; for the torchvision models other than 3 replaces the first conv
            (``conv_proj``, ``features[0][0]``, ``conv1``) with a freshly initialised one.
        image_size: the ViTs' input size; checked by ``swin_t``; ``img_size`` for timm models that take it.
        patch_size: the torchvision ViTs' patch size; ignored by the other models.
        drop_path: stochastic depth rate (Huang et al. 2016); ``swin_t`` and timm models only.
        dropout: torchvision ViT/Swin ``dropout`` (encoder and MLP), before ``fc`` for ResNets,
            timm ``drop_rate`` (before the classifier).

    Raises:
        KeyError: unknown name (the message lists the choices) or unknown timm name.
        ValueError: ``image_size`` not a multiple of ``patch_size`` (ViTs); ``image_size < 4``
            (``swin_t``); ``drop_path > 0`` for a model without stochastic depth; timm refusing an argument.
    """
    if model_type.startswith("timm/"):
        return _timm(model_type[len("timm/") :], num_classes, in_chans, image_size, patch_size, drop_path, dropout)
    if model_type not in ZOO_MODELS:
        raise KeyError(f"unknown zoo model {model_type!r}; choices: {', '.join(ZOO_MODELS)}, or timm/<name>")
    return ZOO_MODELS[model_type](model_type, num_classes, in_chans, image_size, patch_size, drop_path, dropout)


def image_size_problem(model_type, side, patch_size):
    """Why ``model_type`` cannot train on ``side x side`` images (a phrase naming the rule), or ``None``.

    ViTs need ``side`` to be a multiple of ``patch_size`` and >= it; the other torchvision models
    ``side >= MIN_IMAGE_SIZE[model_type]``. ``timm/`` names give ``None``: their limits are the model's.
    For a ``ConfigError`` at parse time (see :func:`base.config.checks.check`).
    """
    if model_type in _VIT_CONFIGS:
        if patch_size > 0 and (side < patch_size or side % patch_size):
            return (
                f"{model_type} needs images whose side is a multiple of --patch_size={patch_size} "
                f"(at least {patch_size}), got {side}x{side}"
            )
        return None
    minimum = MIN_IMAGE_SIZE.get(model_type, 1)
    if side < minimum:
        return (
            f"{model_type} needs images of at least {minimum}x{minimum} pixels, got {side}x{side} "
            f"(see model.zoo.MIN_IMAGE_SIZE)"
        )
    return None


def no_weight_decay_names(model):
    """Names of ``model``'s parameters that get no weight decay, as in "How to train your ViT"
    (Steiner et al. 2021, following the big_vision/timm recipes).

    These are every parameter with ``ndim <= 1`` (biases, norm weights), torchvision's
    ``class_token``, ``encoder.pos_embedding`` and Swin's ``relative_position_bias_table``, and,
    for models with a ``no_weight_decay()`` method (timm), the names or fnmatch patterns it returns.
    Returns a ``set[str]`` of names from ``model.named_parameters()``.
    """
    skip = model.no_weight_decay() if callable(getattr(model, "no_weight_decay", None)) else set()
    return {
        name
        for name, p in model.named_parameters()
        if p.ndim <= 1
        or name.rsplit(".", 1)[-1] in _NO_DECAY_LEAVES
        or any(fnmatch.fnmatch(name, pattern) for pattern in skip)
    }


def classifier_head(model):
    """The module of ``model`` that maps features to logits: what fine-tuning replaces for the data's classes
    and ``--freeze_epochs`` trains alone.

    timm's ``get_classifier()``; torchvision's ``heads`` (ViT, or :func:`trainers.vit_trainer.linear_probe_head`),
    ``head`` (Swin), ``fc`` (ResNet; ``Sequential(Dropout, Linear)`` with ``dropout``). A ``torch.compile``
    wrapper is looked through.

    Raises:
        ValueError: ``model`` has none of these.
    """
    model = getattr(model, "_orig_mod", model)
    if callable(getattr(model, "get_classifier", None)):
        return model.get_classifier()
    for name in ("heads", "head", "fc"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise ValueError(f"{type(model).__name__} has no classifier head (get_classifier(), heads, head or fc)")


def vit_layer_id(name, num_layers):
    """The layer of a torchvision ``VisionTransformer`` parameter for layer-wise LR decay (BEiT/MAE numbering).

    0: ``conv_proj``, ``class_token``, ``encoder.pos_embedding``; ``i + 1``: ``encoder.layers.encoder_layer_<i>``;
    ``num_layers + 1``: everything after the blocks (``encoder.ln``, ``heads``).
    """
    if name.startswith(("conv_proj.", "class_token", "encoder.pos_embedding")):
        return 0
    if name.startswith("encoder.layers.encoder_layer_"):
        return int(name.split(".")[2].rsplit("_", 1)[1]) + 1
    return num_layers + 1


def vit_num_layers(model_type):
    """Encoder blocks of the zoo ViT ``model_type`` (``vit_ti_16``: 12)."""
    return _VIT_CONFIGS[model_type][0]


VIT_MODELS = tuple(_VIT_CONFIGS)
