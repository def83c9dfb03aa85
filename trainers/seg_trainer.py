"""Semantic segmentation of ``K`` classes (``--num_classes``), the binary case ``K = 1`` included.

    python trainer_seg.py --data_dir Dataset/Shapes --num_classes 3 --class_names background,red,blue

``K = 1``: one logit channel, BCE / soft Dice, ``logit > 0``, the binary meter (Dice, IoU); ``K >= 2``:
``K`` logit channels, cross-entropy or focal plus multi-class soft Dice, ``argmax``, the confusion-matrix
meter (per-class IoU/Dice, mIoU). Data: ``--data_type SegFolder`` (:mod:`data.seg_folder`) or
``Carvana`` (:mod:`data.carvana`, ``K = 1``). See docs/SEGMENTATION.md.
"""

import logging

import torch
from torch.nn import functional as F

from base.trainer import TrainerBase
from data.carvana import build_carvana_datasets
from data.input_recipe import input_recipe
from data.seg_data import collate_segmentation, eval_description
from data.seg_folder import build_segfolder_datasets
from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from loss.imbalance import inverse_frequency_weights, resolve_class_weights
from loss.segmentation import SegmentationLoss
from model.segmentation import build_segmentation_model
from trainers.seg_flags import add_seg_arguments, check_seg_config
from utils.seg_colors import voc_palette
from utils.seg_metrics import ConfusionMeter, SegmentationMeter

log = logging.getLogger(__name__)


class SegTrainer(TrainerBase):
    """Train a ``K``-class segmenter; the best checkpoint has the highest validation mIoU.

    Validation and test predict at the training size, resize the prediction (``logit > 0`` for
    ``K = 1``, the argmax over the ``K`` channels else) with nearest-neighbour to each image's
    original size and score it against the full-size mask (:meth:`score_batch`).
    """

    PROG = "trainer_seg.py"
    EVAL_SCRIPT = "eval_seg.py"
    DEFAULTS = {
        "proj_name": "Seg",
        "epochs": 20,
        "batch_size": 8,
        "lr": 2e-3,
        "weight_decay": 1e-4,
        "warmup_steps": 20,
        "data_dir": "Dataset/Shapes",
    }
    monitor, monitor_mode = "miou", "max"
    collate_fn = staticmethod(collate_segmentation)
    RESUME_CHANGEABLE = TrainerBase.RESUME_CHANGEABLE | {"num_viz"}
    # Configs saved before --mean/--std ran with (x / 255 - 0.5) / 0.5: TrainerBase.OLDER_RUN_VALUES says so.
    OLDER_RUN_VALUES = TrainerBase.OLDER_RUN_VALUES
    #: The binary meter also reports miou/mdice/pixel_acc over background and foreground.
    BINARY_CLASS_MEANS = True

    @classmethod
    def default_statistics(cls, args):
        """ImageNet's ``(mean, std)``: segmentation inputs are RGB photos, like those pretrained weights saw."""
        return list(IMAGENET_MEAN), list(IMAGENET_STD)

    @classmethod
    def add_arguments(cls, parser):
        add_seg_arguments(parser)

    @classmethod
    def derived_defaults(cls, args):
        derived = super().derived_defaults(args)
        if args.num_classes >= 2:
            derived["loss"] = ("ce_dice", "--num_classes >= 2: cross-entropy plus soft Dice")
        return derived

    @classmethod
    def check_config(cls, args):
        super().check_config(args)
        check_seg_config(args)

    # ----------------------------------------------------------------- building
    def build_datasets(self):
        build = build_segfolder_datasets if self.args.data_type == "SegFolder" else build_carvana_datasets
        self.data = build(self.args)
        self.train_pixels = None  # per-image class pixel counts, counted once when needed
        return {"train": self.data.train, "val": self.data.val, "test": self.data.test}

    @property
    def num_classes(self):
        """``K`` (``--num_classes``): 1 for a binary mask."""
        return self.args.num_classes

    @property
    def class_names(self):
        """Names of the classes scored: ``K`` (``--class_names``, else ``"0"``, ``"1"``, ...), or for
        ``K = 1`` the two of the mask, background and foreground."""
        if self.num_classes == 1:
            return ["background", "foreground"]
        return self.args.class_names or [str(k) for k in range(self.num_classes)]

    @property
    def palette(self):
        """``[[r, g, b], ...]``: one PASCAL VOC colour per class of :attr:`class_names` (class 0 black)."""
        return voc_palette(len(self.class_names))

    def training_pixel_counts(self):
        """int64 ``(n_train, C)``: pixels of each class in each training mask at the training size (ignore left
        out; ``C = K``, or 2 for a binary mask), in the training split's order. Counted once, on first use:
        one read of every training mask (a file unreadable under ``--bad_images skip`` counts nothing)."""
        if self.train_pixels is None:
            bins = max(2, self.num_classes)
            self.train_pixels = self.data.train.pixel_counts(bins, skip_bad=self.args.bad_images == "skip")
        return self.train_pixels

    def class_weights(self):
        """float32 ``(K,)`` weights of the CE/focal term for ``--class_weights``, or ``None``.

        ``auto``: :func:`loss.imbalance.inverse_frequency_weights` of the training masks' pixels per class
        at the training size, ignore left out (:meth:`training_pixel_counts`: one pass over the training
        masks when the loss is built, about the time of one unaugmented epoch's mask decoding).
        """
        return resolve_class_weights(
            self.args.class_weights,
            self.num_classes,
            lambda: inverse_frequency_weights(self.training_pixel_counts().sum(0)),
        )

    def sample_weights(self):
        """float64 ``(n_train,)``: one drawing weight per training image, in the training split's order
        (for ``--sampler weighted``).

        An image weighs the largest inverse-frequency class weight (:func:`loss.imbalance.inverse_frequency_weights`
        of the training pixels per class) among the classes present in its mask, so an image holding a rare
        class is drawn as often as that class's rarity asks; an image with no counted pixel (all ignored,
        or unreadable and skipped) weighs the smallest weight of a present class. Binary masks count
        background and foreground as two classes.
        """
        counts = self.training_pixel_counts()
        weights = inverse_frequency_weights(counts.sum(0)).double()
        present = counts > 0
        per_image = torch.where(present, weights.expand_as(counts), torch.zeros_like(weights)).amax(1)
        floor = weights[weights > 0].min()
        return torch.where(present.any(1), per_image, floor)

    def build_model(self):
        a = self.args
        return build_segmentation_model(
            a.model_type,
            base_channels=a.base_channels,
            upsample=a.upsample,
            deep_supervision=a.deep_supervision,
            out_channels=a.num_classes,
        )

    def model_card(self):
        """What predict_seg.py (or an ONNX user) needs to segment an image file, from the built task.

        Returns:
            ``{"trainer": class name, "input_shape": [3, H, W], "input": the evaluation resize and the
            statistics (:mod:`data.input_recipe`), "output": how logits become the mask or label map,
            "classes": the class names, "palette": their colours, "ignore_index"}``; JSON-able.
        """
        height, width = self.data.input_size
        if self.num_classes == 1:
            output = {
                "channels": 1,
                "threshold": {"logit": 0.0, "probability": 0.5},
                "mask": "logit > 0, resized with nearest-neighbour to the image's own size",
            }
        else:
            output = {
                "channels": self.num_classes,
                "labels": "argmax over the channels (class index per pixel), resized with nearest-neighbour "
                "to the image's own size",
            }
        return {
            "trainer": type(self).__name__,
            "input_shape": [3, int(height), int(width)],
            "input": input_recipe(3, eval_description((height, width)), self.inputs.describe()),
            "output": output,
            "classes": self.class_names,
            "palette": self.palette,
            "ignore_index": self.args.ignore_index if self.num_classes > 1 else None,
        }

    def build_loss(self):
        a = self.args
        weight = self.class_weights() if self.num_classes > 1 else None
        if weight is not None:
            log.info("class weights of the %s term: %s", a.loss, [round(float(w), 4) for w in weight])
        return SegmentationLoss(
            a.loss, a.bce_weight, a.dice_weight, a.dice_smooth, a.num_classes, a.ignore_index, weight, a.focal_gamma
        )

    # ----------------------------------------------------------------- training and scoring
    def train_step(self, batch):
        return {"loss": self.loss_fn(self.model(batch["image"]), batch["mask"])}

    def make_meter(self):
        """A fresh meter of this task's predictions: :class:`utils.seg_metrics.SegmentationMeter` for
        ``K = 1``, :class:`utils.seg_metrics.ConfusionMeter` for ``K >= 2``."""
        if self.num_classes == 1:
            return SegmentationMeter(class_means=self.BINARY_CLASS_MEANS)
        return ConfusionMeter(self.num_classes, self.args.ignore_index, self.class_names)

    def predict_labels(self, logits):
        """The prediction at the model's size: bool ``(N, 1, H, W)`` ``logits > 0`` for ``K = 1``, else int64
        ``(N, H, W)`` argmax over the channels."""
        return logits > 0 if self.num_classes == 1 else logits.argmax(1)

    def score_batch(self, model, batch, meter):
        """Predict one evaluation batch (on :attr:`device`) with ``model`` and add it to ``meter``.

        The model predicts at the training size; the prediction (:meth:`predict_labels`) is resized with
        nearest-neighbour to each image's original size and scored against its full-size mask.

        Returns:
            ``(logits float32 (N, K, H, W), [prediction per image at its size: bool (H0, W0) for K = 1,
            int64 (H0, W0) else])``.
        """
        with self.autocast():
            logits = model(batch["image"])
        logits = logits.float()
        meter.add_loss(self.loss_fn(logits, batch["mask"]), logits.shape[0])
        small = self.predict_labels(logits)
        binary = self.num_classes == 1
        preds = []
        for i, full in enumerate(batch["full_mask"]):
            one = small[i : i + 1].float() if binary else small[i : i + 1, None].float()
            pred = F.interpolate(one, size=full.shape[-2:], mode="nearest")[0, 0]
            pred = pred > 0 if binary else pred.long()
            meter.update(pred[None], full[None])
            preds.append(pred)
        return logits, preds

    def validate(self, model, loader):
        meter, grid = self.make_meter(), None
        for batch in loader:
            logits, _ = self.score_batch(model, self.to_device(batch), meter)
            if grid is None and self.args.num_viz:
                grid = self.picture_grid(batch, logits[: self.args.num_viz])
        if grid is not None and loader is self.loaders.get("val"):  # (an evaluator's task has no loggers)
            self.log_image("val/image_truth_prediction", grid)
        return meter.compute()

    def picture_grid(self, batch, logits):
        """TensorBoard's image | truth | prediction | errors grid of the first ``len(logits)`` samples of a
        loader's ``batch`` (its images still the uint8 pixels, shown as they are)."""
        from utils import plots  # matplotlib: only when a grid is drawn

        n = len(logits)
        preds = self.predict_labels(logits).cpu()
        if self.num_classes == 1:
            return plots.segmentation_grid(
                batch["image"][:n], batch["mask"][:n], preds, self.inputs.mean, self.inputs.std
            )
        return plots.label_grid(
            batch["image"][:n],
            batch["mask"][:n],
            preds,
            self.palette,
            self.args.ignore_index,
            self.inputs.mean,
            self.inputs.std,
        )
