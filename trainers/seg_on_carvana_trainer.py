"""Binary segmentation of cars in the Carvana layout: U-Net, UNet++ or a torchvision baseline."""

from torch.nn import functional as F

from base.config.checks import check
from base.config.parse import str2bool
from base.trainer import TrainerBase
from data.carvana import (
    add_carvana_arguments,
    build_carvana_datasets,
    check_carvana_config,
    collate_segmentation,
    eval_description,
)
from data.input_recipe import input_recipe
from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from loss.segmentation import LOSSES, SegmentationLoss
from model.segmentation import SEG_MODELS, build_segmentation_model
from utils.seg_metrics import SegmentationMeter


class SegOnCarvanaTrainer(TrainerBase):
    """Train a car/background segmenter; the best checkpoint has the highest validation Dice.

    Validation and test score predictions made at the training size, resized
    with nearest-neighbour to each image's original size, against the
    full-size mask (see :meth:`score_batch`).
    """

    PROG = "trainer_seg_on_carvana.py"
    EVAL_SCRIPT = "eval_seg_on_carvana.py"
    DEFAULTS = {
        "proj_name": "SegOnCarvana",
        "epochs": 20,
        "batch_size": 8,
        "lr": 2e-3,
        "weight_decay": 1e-4,
        "warmup_steps": 20,
    }
    monitor, monitor_mode = "dice", "max"
    collate_fn = staticmethod(collate_segmentation)
    RESUME_CHANGEABLE = TrainerBase.RESUME_CHANGEABLE | {"num_viz"}
    # Configs saved before --mean/--std ran with (x / 255 - 0.5) / 0.5: TrainerBase.OLDER_RUN_VALUES says so.
    OLDER_RUN_VALUES = TrainerBase.OLDER_RUN_VALUES

    @classmethod
    def default_statistics(cls, args):
        """ImageNet's ``(mean, std)``: Carvana's photos are RGB file images, like those pretrained weights saw."""
        return list(IMAGENET_MEAN), list(IMAGENET_STD)

    @classmethod
    def add_arguments(cls, parser):
        group = parser.add_argument_group("segmentation")
        group.add_argument(
            "--model_type",
            choices=sorted(SEG_MODELS),
            default="UNet",
            help="UNet, UNetPlusPlus, or a torchvision baseline (random init)",
        )
        group.add_argument("--base_channels", type=int, default=16, help="width of the first U-Net level")
        group.add_argument(
            "--upsample", choices=["bilinear", "transpose"], default="bilinear", help="U-Net decoder upsampling"
        )
        group.add_argument(
            "--deep_supervision",
            type=str2bool,
            nargs="?",
            const=True,
            default=False,
            help="UNetPlusPlus: a loss on each nested decoder's head",
        )
        group.add_argument("--loss", choices=LOSSES, default="bce_dice", help="training loss")
        group.add_argument("--bce_weight", type=float, default=1.0, help="BCE weight in bce_dice")
        group.add_argument("--dice_weight", type=float, default=1.0, help="soft Dice weight in bce_dice")
        group.add_argument("--dice_smooth", type=float, default=1.0, help="soft Dice smooth term")
        group.add_argument(
            "--num_viz", type=int, default=4, help="validation images in TensorBoard's image | truth | prediction grid"
        )
        add_carvana_arguments(parser)

    @classmethod
    def check_config(cls, args):
        super().check_config(args)
        check_carvana_config(args)
        check(args.base_channels > 0, "base_channels", args.base_channels, "must be > 0")
        for flag in ("bce_weight", "dice_weight", "num_viz"):
            check(getattr(args, flag) >= 0, flag, getattr(args, flag), "must be >= 0")
        check(args.dice_smooth > 0, "dice_smooth", args.dice_smooth, "must be > 0")

    def build_datasets(self):
        self.data = build_carvana_datasets(self.args)
        return {"train": self.data.train, "val": self.data.val, "test": self.data.test}

    def build_model(self):
        a = self.args
        return build_segmentation_model(
            a.model_type, base_channels=a.base_channels, upsample=a.upsample, deep_supervision=a.deep_supervision
        )

    def model_card(self):
        """What predict_seg.py (or an ONNX user) needs to segment an image file, from the built task.

        Returns:
            ``{"trainer": class name, "input_shape": [3, H, W], "input": the evaluation resize and the
            statistics (:mod:`data.input_recipe`), "output": how logits become the mask}``; JSON-able.
        """
        height, width = self.data.input_size
        return {
            "trainer": type(self).__name__,
            "input_shape": [3, int(height), int(width)],
            "input": input_recipe(3, eval_description((height, width)), self.inputs.describe()),
            "output": {
                "channels": 1,
                "threshold": {"logit": 0.0, "probability": 0.5},
                "mask": "logit > 0, resized with nearest-neighbour to the image's own size",
            },
        }

    def build_loss(self):
        a = self.args
        return SegmentationLoss(a.loss, a.bce_weight, a.dice_weight, a.dice_smooth)

    def train_step(self, batch):
        return {"loss": self.loss_fn(self.model(batch["image"]), batch["mask"])}

    def score_batch(self, model, batch, meter):
        """Predict one evaluation batch (on :attr:`device`) with ``model`` and add it to ``meter``.

        The model predicts at the training size; ``logits > 0`` (probability
        > 0.5) is resized with nearest-neighbour to each image's original size
        and scored against its full-size mask.

        Returns:
            ``(logits float32 (N, 1, H, W), [bool (H0, W0) prediction per image])``.
        """
        with self.autocast():
            logits = model(batch["image"])
        logits = logits.float()
        meter.add_loss(self.loss_fn(logits, batch["mask"]), logits.shape[0])
        preds = []
        for i, full in enumerate(batch["full_mask"]):
            pred = F.interpolate((logits[i : i + 1] > 0).float(), size=full.shape[-2:], mode="nearest")[0, 0] > 0
            meter.update(pred[None], full[None])
            preds.append(pred)
        return logits, preds

    def validate(self, model, loader):
        meter, grid = SegmentationMeter(), None
        for batch in loader:
            logits, _ = self.score_batch(model, self.to_device(batch), meter)
            if grid is None and self.args.num_viz:
                n = self.args.num_viz
                from utils.plots import segmentation_grid  # matplotlib: only when a grid is drawn

                # the loader's batch: its images are still the uint8 pixels, shown as they are
                grid = segmentation_grid(
                    batch["image"][:n], batch["mask"][:n], (logits[:n] > 0).cpu(), self.inputs.mean, self.inputs.std
                )
        if grid is not None and loader is self.loaders.get("val"):  # (an evaluator's task has no loggers)
            self.log_image("val/image_truth_prediction", grid)
        return meter.compute()
