"""Binary segmentation of cars in the Carvana layout: U-Net, UNet++ or a torchvision baseline."""

from base.config.checks import check
from trainers.seg_trainer import SegTrainer


class SegOnCarvanaTrainer(SegTrainer):
    """Train a car/background segmenter; the best checkpoint has the highest validation Dice.

    The Carvana case of :class:`trainers.seg_trainer.SegTrainer`: ``--data_type Carvana``,
    ``--num_classes 1``, its own project name, entry and eval scripts and monitor, and the binary meter's
    metrics only (``loss``, ``dice``, ``iou``, ``dice_per_image``, ``iou_per_image``), so runs and
    checkpoints of before resume and evaluate unchanged. Validation and test score predictions made at
    the training size, resized with nearest-neighbour to each image's original size, against the
    full-size mask (see :meth:`score_batch`).
    """

    PROG = "trainer_seg_on_carvana.py"
    EVAL_SCRIPT = "eval_seg_on_carvana.py"
    DEFAULTS = {"proj_name": "SegOnCarvana", "data_dir": "Dataset/Carvana", "data_type": "Carvana"}
    monitor, monitor_mode = "dice", "max"
    BINARY_CLASS_MEANS = False

    @classmethod
    def check_config(cls, args):
        for flag, value in (("data_type", "Carvana"), ("num_classes", 1)):
            check(
                getattr(args, flag) == value,
                flag,
                getattr(args, flag),
                f"{cls.PROG} segments Carvana's cars ({value}); use trainer_seg.py",
            )
        super().check_config(args)
