"""Image classification with cross-entropy on Digits, (Fashion)MNIST or an image folder.

``--data_on_device`` (in-memory data sets, not ImageFolder): the stored uint8 training images are
uploaded once and batches are gathered on the device (:mod:`base.device_data`); the training crop
of ``--train_crop rrc`` runs there, per sample, with kornia (:func:`device_augment`).
"""

import torch

from base.config import check
from base.errors import DataError
from base.trainer_base import TrainerBase
from data.classification import (
    add_data_arguments,
    build_classification_datasets,
    default_statistics,
    image_side,
    validate_data_config,
)
from data.input_recipe import input_recipe
from loss.classification import build_classification_loss
from model.classifiers import CLASSIFIERS, build_classifier, image_size_problem
from utils.metrics import ClassificationMeter


class VanillaTrainer(TrainerBase):
    """Train a classifier; the best checkpoint is the one with the highest validation top-1."""

    PROG = "trainer_vanilla.py"
    DEFAULTS = {"proj_name": "Vanilla", "epochs": 30, "lr": 2e-3, "weight_decay": 1e-4}
    monitor, monitor_mode = "top1", "max"
    OLDER_RUN_VALUES = {**TrainerBase.OLDER_RUN_VALUES, "train_crop": "squash"}  # images were squashed then
    default_statistics = classmethod(lambda cls, args: default_statistics(args))

    @classmethod
    def add_arguments(cls, parser):
        group = parser.add_argument_group("classification")
        group.add_argument(
            "--model_type",
            choices=sorted(CLASSIFIERS),
            default="Vanilla",
            help="Vanilla: MLP on pixels; SmallCNN: 4 conv layers",
        )
        group.add_argument("--label_smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
        add_data_arguments(parser)

    @classmethod
    def validate_config(cls, args):
        super().validate_config(args)
        check_data_on_device(args)
        validate_data_config(args)
        flag, value, side = image_side(args)
        problem = image_size_problem(args.model_type, side)
        check(problem is None, flag, value, problem)

    def build_datasets(self):
        self.data = build_classification_datasets(self.args)
        return {"train": training_split(self.data, self.args), "val": self.data.val, "test": self.data.test}

    def build_device_augment(self):
        return device_augment(self.args, self.data.input_shape[-1]) if self.args.data_on_device else None

    def build_model(self):
        return self.model_for(self.args, self.data.input_shape, self.data.num_classes)

    @classmethod
    def model_for(cls, args, input_shape, num_classes):
        """The untrained ``args.model_type`` for images ``(C, H, W)`` and ``num_classes`` logits; needs no data.

        Raises:
            KeyError: unknown ``model_type`` (see :func:`model.classifiers.build_classifier`).
        """
        return build_classifier(args.model_type, input_shape, num_classes)

    def model_card(self):
        return classifier_model_card(self)

    def build_loss(self):
        return build_classification_loss(self.args.label_smoothing)

    def train_step(self, batch):
        images, labels = batch
        return {"loss": self.loss_fn(self.model(images), labels)}

    def validate(self, loader):
        return validate_classifier(self, loader)


def check_data_on_device(args):
    """Refuse ``--data_on_device`` with ``--data_type ImageFolder`` (its images are decoded from files per item).

    Raises:
        ConfigError: naming both flags.
    """
    check(
        not (args.data_on_device and args.data_type == "ImageFolder"),
        "data_on_device",
        args.data_on_device,
        "needs images held in memory (Digits, MNIST, FashionMNIST, CIFAR10, ELPV); --data_type ImageFolder "
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
    (:func:`base.state.seed_position`): a resumed run draws the same ones.

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


def validate_classifier(task, loader):
    """Loss, top-1 and top-5 of ``task.model`` over ``loader`` (see :class:`ClassificationMeter`).

    Shared by the classification trainers; ``task`` has ``model``, ``loss_fn``,
    ``data.num_classes``, ``to_device`` and ``autocast``.
    """
    meter = ClassificationMeter(task.data.num_classes)
    for images, labels in loader:
        images, labels = task.to_device((images, labels))
        with task.autocast():
            logits = task.model(images)
        meter.update(logits.float(), labels, task.loss_fn(logits.float(), labels))
    return meter.compute()


def classifier_model_card(task):
    """What predict.py (or an ONNX user) needs to classify an image file without the dataset, from ``task``.

    ``task`` is built: ``task.data`` (:class:`data.classification.ClassificationData`) and ``task.inputs``
    (:class:`base.input_stage.InputStage`).

    Returns:
        ``{"trainer": class name, "class_names": [str] (index = label), "input_shape": [C, H, W] (ints),
        "input": the evaluation transform and statistics (see :mod:`data.input_recipe`)}``; JSON-able.
    """
    shape = [int(n) for n in task.data.input_shape]
    return {
        "trainer": type(task).__name__,
        "class_names": list(task.data.class_names),
        "input_shape": shape,
        "input": input_recipe(shape[0], task.data.eval_transform, task.inputs.describe()),
    }
