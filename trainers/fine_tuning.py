"""Fine-tuning a zoo classifier from published weights: ``--pretrained`` and ``--freeze_epochs``.

``--pretrained`` starts the model from its published weights (:mod:`model.hub`: timm's Hugging Face hub
files for ``timm/<name>[.<tag>]``, torchvision's for ``resnet18``, ``resnet50``, ``swin_t``, ``vit_b_16``)
through :func:`model.pretrained.load_state`, as ``--pretrained_path`` does. It changes defaults that
follow from the weights (:func:`fine_tuning_defaults`, applied only to flags nothing else set, each
with its provenance): ``--mean``, ``--std`` (averaged over RGB for 1-channel data, whose stem is the RGB
stem summed), ``--image_size``, ``--crop_pct`` and the ViT ``--patch_size`` of the weights, and
``--lr`` :data:`FINE_TUNING_LR`. ``--freeze_epochs N`` trains only the classifier head for N epochs
(:class:`FreezeBody`).
"""

import logging

from base.config.checks import check
from base.config.parse import str2bool
from base.hooks import HookBase
from data.classification import FIXED_SIDES, data_channels
from model.hub import published_weights
from model.zoo import classifier_head

__all__ = [
    "FINE_TUNING_LR",
    "FreezeBody",
    "add_fine_tuning_arguments",
    "check_fine_tuning_config",
    "fine_tuning_defaults",
]

log = logging.getLogger(__name__)

#: ``--lr`` with ``--pretrained`` when not given: a tenth of ViTTrainer's from-scratch 1e-3, so the first steps
#: adjust the published features rather than overwrite them (Hugging Face's ``Trainer`` fine-tunes with AdamW
#: at 5e-5 by default). A starting point: tune it for the data, and together with ``--layer_decay``.
FINE_TUNING_LR = 1e-4


def add_fine_tuning_arguments(model, recipe):
    """Add ``--pretrained`` to the ``model`` argument group and ``--freeze_epochs`` to ``recipe``."""
    model.add_argument(
        "--pretrained",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="start from the model's published weights (timm/<name>[.<tag>]: timm's, read from the Hugging Face "
        "cache; resnet18, resnet50, swin_t, vit_b_16: torchvision's, from $TORCH_HOME/hub/checkpoints; "
        "downloaded unless HF_HUB_OFFLINE=1); their mean, std, image size and crop_pct become the defaults, "
        f"and --lr's default becomes {FINE_TUNING_LR:g}",
    )
    recipe.add_argument(
        "--freeze_epochs",
        type=int,
        default=0,
        help="train only the classifier head for the first N epochs, then the whole model (0: off)",
    )


def check_fine_tuning_config(args):
    """Raise ``ConfigError`` naming the flag: ``--freeze_epochs`` < 0; ``--pretrained`` with
    ``--pretrained_path``, for a model without published weights, or for ``vit_b_16`` with a
    ``--patch_size`` other than its weights' 16."""
    check(args.freeze_epochs >= 0, "freeze_epochs", args.freeze_epochs, "must be >= 0 (0: off)")
    if not args.pretrained:
        return
    check(
        not args.pretrained_path,
        "pretrained",
        args.pretrained,
        f"not with --pretrained_path {args.pretrained_path}: pick one source of initial weights",
    )
    weights = published_weights(args.model_type)  # refuses a model without published weights
    check(
        weights.patch_size in (None, args.patch_size),
        "patch_size",
        args.patch_size,
        f"{weights.name} has {weights.patch_size}x{weights.patch_size} patches: leave --patch_size unset or pass "
        f"{weights.patch_size}",
    )


def fine_tuning_defaults(args):
    """With ``--pretrained``, ``{flag: (value, reason)}`` for :meth:`base.task.TaskSteps.derived_defaults`.

    ``--mean``/``--std``: the weights' (for 1-channel ``--data_type``: the mean over R, G, B of each, the
    grey pixel being R = G = B and the stem summed over them); ``--image_size`` (not for the data of one
    fixed size); ``--crop_pct``; ``--patch_size`` of a torchvision ViT's weights; ``--lr``
    :data:`FINE_TUNING_LR`. ``{}`` without ``--pretrained``.

    Raises:
        ConfigError: the model has no published weights (see :func:`model.hub.published_weights`).
    """
    if not args.pretrained:
        return {}
    weights = published_weights(args.model_type)
    source = f"pretrained weights ({weights.name})"
    mean, std, stats = list(weights.mean), list(weights.std), source
    if data_channels(args.data_type) == 1 and len(mean) > 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
        stats = f"{source}, averaged over RGB for --data_type {args.data_type}'s 1 channel"
    out = {"mean": (mean, stats), "std": (std, stats), "crop_pct": (weights.crop_pct, source)}
    if args.data_type not in FIXED_SIDES:  # --image_size is ignored there
        out["image_size"] = (weights.image_size, source)
    if weights.patch_size:
        out["patch_size"] = (weights.patch_size, source)
    out["lr"] = (FINE_TUNING_LR, "the fine-tuning default of --pretrained")
    return out


class FreezeBody(HookBase):
    """``--freeze_epochs N``: during epochs 1..N only the classifier head learns, from epoch N + 1 the whole model.

    After each backward (before clipping and the optimizer step) the gradients of every parameter outside
    :func:`model.zoo.classifier_head` are dropped (set to ``None``) while ``trainer.epoch < N``. The optimizer
    skips a parameter without a gradient: it neither moves nor decays it, and its AdamW moments start when
    it starts to learn. Dropping them, rather than ``requires_grad = False``, keeps DDP's gradient buckets
    the same in both phases (the backward costs what it costs unfrozen). The body's BatchNorm statistics
    still follow the data (train mode). The phase follows the epoch counter alone: a run resumed inside or
    after the frozen epochs does what the straight run did, with no state to save.
    """

    def __init__(self, epochs):
        self.epochs = epochs
        self.body = []

    def before_train(self):
        model = self.trainer.raw_model
        head = {id(p) for p in classifier_head(model).parameters()}
        params = list(model.parameters())
        self.body = [p for p in params if id(p) not in head]
        log.info(
            "--freeze_epochs %d: only the classifier head trains until epoch %d ends (%d of the model's %d "
            "parameter tensors), then the whole model",
            self.epochs,
            self.epochs,
            len(params) - len(self.body),
            len(params),
        )

    def before_epoch(self):
        if self.trainer.epoch == self.epochs:
            log.info("epoch %d: the whole model trains from here (--freeze_epochs %d)", self.epochs + 1, self.epochs)

    def after_backward(self):
        if self.trainer.epoch < self.epochs:
            for param in self.body:
                param.grad = None
