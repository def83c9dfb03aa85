"""What the classification trainers share (``VanillaTrainer``, ``ViTTrainer`` and through it ``MAETrainer``):
the ``--data_on_device`` pieces, validation by top-1/top-5 and balanced accuracy (mAP for multi-label data:
:mod:`trainers.multilabel`), the model card a predictor reads, and class imbalance (``--loss``, ``--class_weights``,
``--focal_gamma``, the ``--sampler weighted`` sample weights; see docs/IMBALANCE.md)."""

import logging

import torch

from base.config.checks import check
from base.errors import DataError
from data.classification import FILE_TYPES
from data.input_recipe import input_recipe
from loss.classification import LOSSES, build_classification_loss
from loss.imbalance import (
    add_imbalance_arguments,
    check_imbalance_config,
    inverse_frequency_weights,
    positive_weights,
    resolve_class_weights,
)
from trainers.multilabel import multilabel_card, validate_multilabel
from utils.metrics import ClassificationMeter

log = logging.getLogger(__name__)


def check_data_on_device(args):
    """Refuse ``--data_on_device`` with ``--data_type ImageFolder`` or ``ImageCSV`` (decoded from files per item).

    Raises:
        ConfigError: naming both flags.
    """
    check(
        not (args.data_on_device and args.data_type in FILE_TYPES),
        "data_on_device",
        args.data_on_device,
        f"needs images held in memory (Digits, MNIST, FashionMNIST, CIFAR10, ELPV); --data_type {args.data_type} "
        "decodes files: leave it off and use --num_workers",
    )


def training_split(data, args):
    """The training split the loader reads: ``data.train`` (its transforms run per item, in workers), or with
    ``--data_on_device`` the images as stored (``data.stored_train``), whose random ops run on the device instead
    (:func:`device_augment`), so nothing is augmented twice.

    Raises:
        DataError: ``--data_on_device`` and the data have no stored training tensors at the model's size.
    """
    if not args.data_on_device:
        return data.train
    if data.stored_train is None:
        raise DataError(
            f"--data_on_device: --data_type {args.data_type} images are not stored at the model's size "
            f"{tuple(data.input_shape)}; leave --data_on_device off"
        )
    return data.stored_train


def device_augment(args, side, hflip=0.0, vflip=0.0):
    """The random training ops of :func:`data.transforms.train_transform` on the device, per sample, with kornia.

    ``--train_crop rrc``: ``RandomResizedCrop`` to ``side`` x ``side`` with ``--scale`` and ``--ratio`` (bilinear,
    as one batched warp: kornia's ``cropping_mode="resample"``; no antialiasing, unlike torchvision's crop of the
    worker path); then horizontal / vertical flips with probabilities ``hflip`` / ``vflip``. kornia draws each
    sample's parameters on the CPU from torch's global generator, which the loop seeds by the step's position
    (:func:`base.loop.state.seed_position`): a resumed run draws the same ones.

    Returns:
        ``None`` when nothing is random, else a module on float ``(N, C, H, W)`` in [0, 1] returning
        float ``(N, C, side, side)`` in [0, 1].
    """
    import kornia.augmentation as K  # here, not at import: only --data_on_device runs need it

    ops = (
        [K.RandomResizedCrop((side, side), scale=tuple(args.scale), ratio=tuple(args.ratio), cropping_mode="resample")]
        if args.train_crop == "rrc"
        else []
    )
    ops += [K.RandomHorizontalFlip(p=hflip)] if hflip else []
    ops += [K.RandomVerticalFlip(p=vflip)] if vflip else []
    return torch.nn.Sequential(*ops) if ops else None


def validate_classifier(task, model, loader):
    """Loss, top-1 and top-5 of ``model`` over ``loader`` (see :class:`ClassificationMeter`); for multi-label
    data (``task.data.multilabel``) loss, mAP, micro and mean F1 (:func:`trainers.multilabel.validate_multilabel`).

    Shared by the classification trainers; ``task`` has ``loss_fn``,
    ``data.num_classes``, ``to_device`` and ``autocast``.
    """
    if task.data.multilabel:
        return validate_multilabel(task, model, loader)
    meter = ClassificationMeter(task.data.num_classes)
    for images, labels in loader:
        images, labels = task.to_device((images, labels))
        with task.autocast():
            logits = model(images)
        meter.update(logits.float(), labels, task.loss_fn(logits.float(), labels))
    return meter.compute()


def classifier_model_card(task):
    """What predict.py (or an ONNX user) needs to classify an image file without the dataset, from ``task``.

    ``task`` is built: ``task.data`` (:class:`data.classification.ClassificationData`) and ``task.inputs``
    (:class:`base.loop.input_stage.InputStage`).

    Returns:
        ``{"trainer": class name, "class_names": [str] (index = label), "input_shape": [C, H, W] (ints),
        "input": the evaluation transform and statistics (see :mod:`data.input_recipe`)}``; JSON-able. For
        multi-label data also ``"multilabel": True`` and ``"threshold"`` (``--threshold``); ``class_names`` are
        then the label names.
    """
    shape = [int(n) for n in task.data.input_shape]
    return {
        "trainer": type(task).__name__,
        "class_names": list(task.data.class_names),
        "input_shape": shape,
        "input": input_recipe(shape[0], task.data.eval_transform, task.inputs.describe()),
        **multilabel_card(task),
    }


def add_imbalance_flags(parser):
    """Add the ``class imbalance`` group: ``--loss ce|focal``, ``--class_weights``, ``--focal_gamma``."""
    group = parser.add_argument_group("class imbalance")
    group.add_argument(
        "--loss",
        choices=LOSSES,
        default="ce",
        help="ce: cross-entropy; focal: the focal loss (Lin et al. 2017) with --focal_gamma",
    )
    add_imbalance_arguments(group)


def check_imbalance_flags(args):
    """Refuse ``--focal_gamma < 0`` and ``--label_smoothing`` > 0 with ``--loss focal`` (the focal loss has none).

    Raises:
        ConfigError: naming the flag.
    """
    check_imbalance_config(args)
    check(
        not (args.loss == "focal" and args.label_smoothing > 0),
        "label_smoothing",
        args.label_smoothing,
        "not with --loss focal (it has no label smoothing): pass --label_smoothing 0",
    )


def imbalance_defaults(args):
    """``{flag: (value, reason)}`` for ``derived_defaults``: ``--loss focal`` makes ``--label_smoothing`` 0."""
    return {"label_smoothing": (0.0, "--loss focal takes no label smoothing")} if args.loss == "focal" else {}


def training_labels(data, flag):
    """``data.train_labels`` (int64 ``(n,)``, or float ``(n, K)`` 0/1 for multi-label data).

    Raises:
        DataError: the data give none; names ``flag`` and why it needs them.
    """
    if data.train_labels is None:
        raise DataError(f"{flag}: this data gives no training labels to count")
    return data.train_labels


def class_weights(task):
    """The loss's class weights that ``--class_weights`` asks for, float32 ``(K,)`` or ``None``; logged once.

    ``auto``: :func:`loss.imbalance.inverse_frequency_weights` of the training split's class counts
    (``n / (K * n_c)``), or for multi-label data BCE's ``pos_weight``, ``negatives / positives`` per label
    (:func:`loss.imbalance.positive_weights`).

    Raises:
        ConfigError: a list whose length is not the number of classes. DataError: ``auto`` without labels.
    """
    choice, data = task.args.class_weights, task.data

    def auto():
        labels = training_labels(data, "--class_weights auto")
        if data.multilabel:
            return positive_weights((labels > 0.5).sum(0), len(labels))
        return inverse_frequency_weights(torch.bincount(labels, minlength=data.num_classes))

    weights = resolve_class_weights(choice, data.num_classes, auto)
    if weights is not None:
        how = "given"
        if choice == "auto":
            rule = "positive weight, negatives / positives" if data.multilabel else "inverse frequency"
            how = f"auto, {rule} on {len(data.train_labels)} training samples"
        log.info("class weights (%s): %s", how, ", ".join(f"{w:.4g}" for w in weights.tolist()))
    return weights


def classification_loss(task):
    """The training loss of ``--loss``, ``--class_weights``, ``--focal_gamma`` and ``--label_smoothing`` for
    ``task``'s data (:func:`loss.classification.build_classification_loss`)."""
    a = task.args
    weights = class_weights(task)
    return build_classification_loss(a.label_smoothing, a.loss, weights, a.focal_gamma, multilabel=task.data.multilabel)


def classification_sample_weights(data):
    """float64 ``(n,)``: the ``--sampler weighted`` weight of each training sample, in the split's order.

    Single-label: the inverse-frequency weight of its class, ``n / (K * n_c)``
    (:func:`loss.imbalance.inverse_frequency_weights`), so each class is drawn equally often in expectation,
    whatever ``--class_weights`` says. Multi-label: the largest of its positive labels' inverse-frequency
    weights (counts of positives per label), a sample without any positive label counting as one more
    "no label" class; a sample's rarest label decides how often it is drawn.

    Raises:
        DataError: the data give no training labels.
    """
    labels = training_labels(data, "--sampler weighted")
    if not data.multilabel:
        per_class = inverse_frequency_weights(torch.bincount(labels, minlength=data.num_classes)).double()
        return per_class[labels]
    positive = labels > 0.5  # (n, K)
    groups = torch.cat([positive, ~positive.any(1, keepdim=True)], dim=1)  # (n, K + 1): the last is "no label"
    per_group = inverse_frequency_weights(groups.sum(0)).double()
    return (groups.double() * per_group).amax(1)
