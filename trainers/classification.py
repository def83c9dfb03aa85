"""What the classification trainers share (``VanillaTrainer``, ``ViTTrainer`` and through it ``MAETrainer``):
the ``--data_on_device`` pieces, validation by top-1/top-5 (mAP for multi-label data: :mod:`trainers.multilabel`),
and the model card a predictor reads."""

import torch

from base.config.checks import check
from base.errors import DataError
from data.classification import FILE_TYPES
from data.input_recipe import input_recipe
from trainers.multilabel import multilabel_card, validate_multilabel
from utils.metrics import ClassificationMeter


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
