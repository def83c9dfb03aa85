"""Segmentation models, looked up by ``--model_type`` through :func:`build_segmentation_model`.

Every model maps ``images: float32 (N, 3, H, W)`` to ``logits: float32 (N, K, H, W)``: ``K = 1`` (the
default) one binary-mask logit per pixel, else one logit per class and pixel (``out_channels``). The one
exception: ``UNetPlusPlus`` with ``deep_supervision`` returns a list of 4 logits tensors in training mode
(see :class:`model.unet.UNetPlusPlus`).

The torchvision models are built randomly initialised (``weights=None, weights_backbone=None``):
nothing is downloaded. ``MIN_INPUT_SIZE`` is the smallest H and W the U-Nets accept.
"""

from torch import nn

from model.unet import MIN_INPUT_SIZE, UNet, UNetPlusPlus

__all__ = ["MIN_INPUT_SIZE", "SEG_MODELS", "TorchvisionSegmentation", "build_segmentation_model"]


class TorchvisionSegmentation(nn.Module):
    """Wraps a torchvision segmentation model so ``forward`` returns the tensor ``out`` of its dict.

    Input ``float32 (N, 3, H, W)``; output logits ``float32 (N, num_classes, H, W)``.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, images):
        return self.net(images)["out"]


def _torchvision_builder(name):
    """A builder for torchvision's segmentation model ``name`` (e.g. ``fcn_resnet50``): random init, 1 class,
    no aux head. torchvision is imported when it builds, not when this module is imported."""

    def build(in_channels, base_channels, upsample, deep_supervision, out_channels=1):
        from torchvision.models import segmentation as tv_seg

        if in_channels != 3:
            raise ValueError(f"{name} takes 3-channel images, got in_channels={in_channels}")
        net = getattr(tv_seg, name)(weights=None, weights_backbone=None, num_classes=out_channels, aux_loss=False)
        return TorchvisionSegmentation(net)

    return build


def _unet(in_channels, base_channels, upsample, deep_supervision, out_channels=1):
    return UNet(in_channels, out_channels, base_channels, upsample)


def _unet_plus_plus(in_channels, base_channels, upsample, deep_supervision, out_channels=1):
    return UNetPlusPlus(in_channels, out_channels, base_channels, deep_supervision)


# name -> builder(in_channels, base_channels, upsample, deep_supervision, out_channels) -> nn.Module
SEG_MODELS = {
    "UNet": _unet,
    "UNetPlusPlus": _unet_plus_plus,
    "fcn_resnet50": _torchvision_builder("fcn_resnet50"),
    "deeplabv3_resnet50": _torchvision_builder("deeplabv3_resnet50"),
    "lraspp_mobilenet_v3_large": _torchvision_builder("lraspp_mobilenet_v3_large"),
}


def build_segmentation_model(
    model_type, in_channels=3, base_channels=32, upsample="bilinear", deep_supervision=False, out_channels=1
):
    """Instantiate ``SEG_MODELS[model_type]`` with ``out_channels`` output channels (1: a binary mask's logit,
    ``K >= 2``: one logit per class).

    ``base_channels`` and ``upsample`` apply to ``UNet``, ``base_channels`` and
    ``deep_supervision`` to ``UNetPlusPlus``; the torchvision models ignore all three.

    Raises:
        KeyError: unknown ``model_type`` (the message lists the choices).
        ValueError: a torchvision model with ``in_channels != 3``; a bad ``upsample`` for ``UNet``.
    """
    if model_type not in SEG_MODELS:
        raise KeyError(f"unknown segmentation model {model_type!r}; choices: {', '.join(SEG_MODELS)}")
    return SEG_MODELS[model_type](in_channels, base_channels, upsample, deep_supervision, out_channels)
