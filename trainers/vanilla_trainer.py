"""Image classification with cross-entropy on Digits, (Fashion)MNIST or an image folder; multi-label
classification with per-label binary cross-entropy on ``--data_type ImageCSV`` (see :mod:`trainers.multilabel`).

``--data_on_device`` (in-memory data sets, not ImageFolder): the stored uint8 training images are
uploaded once and batches are gathered on the device (:mod:`base.loop.device_data`); the training crop
of ``--train_crop rrc`` runs there, per sample, with kornia (:func:`trainers.classification.device_augment`).
"""

from base.config.checks import check
from base.trainer import TrainerBase
from data.classification import (
    add_data_arguments,
    build_classification_datasets,
    check_data_config,
    default_statistics,
    image_side,
)
from model.classifiers import CLASSIFIERS, build_classifier, image_size_problem
from trainers import multilabel
from trainers.classification import (
    add_imbalance_flags,
    check_data_on_device,
    check_imbalance_flags,
    classification_loss,
    classification_sample_weights,
    classifier_model_card,
    device_augment,
    training_split,
    validate_classifier,
)


class VanillaTrainer(TrainerBase):
    """Train a classifier; the best checkpoint is the one with the highest validation top-1 (multi-label: mAP)."""

    PROG = "trainer_vanilla.py"
    EVAL_SCRIPT = "eval_vanilla.py"
    DEFAULTS = {"proj_name": "Vanilla", "epochs": 30, "lr": 2e-3, "weight_decay": 1e-4}
    monitor, monitor_mode = "top1", "max"
    monitored = classmethod(lambda cls, args: multilabel.monitored(args))
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
        add_imbalance_flags(parser)
        add_data_arguments(parser)
        multilabel.add_multilabel_arguments(parser)

    @classmethod
    def check_config(cls, args):
        super().check_config(args)
        check_imbalance_flags(args)
        check_data_on_device(args)
        check_data_config(args)
        multilabel.check_multilabel_config(args)
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
        return classification_loss(self)

    def sample_weights(self):
        return classification_sample_weights(self.data)

    def train_step(self, batch):
        images, labels = batch
        return {"loss": self.loss_fn(self.model(images), labels)}

    def validate(self, model, loader):
        return validate_classifier(self, model, loader)
