"""Evaluate a Carvana segmentation checkpoint: Dice/IoU at full resolution, optional picture sets."""

from evaluators.seg_evaluator import SegEvaluator
from trainers.seg_on_carvana_trainer import SegOnCarvanaTrainer


class SegOnCarvanaEvaluator(SegEvaluator):
    """Report Dice and IoU of a split; with ``--viz`` save image, truth, prediction and an overlay figure.

    The Carvana case of :class:`evaluators.seg_evaluator.SegEvaluator` (checkpoints of
    ``trainer_seg_on_carvana.py``).
    """

    PROG = "eval_seg_on_carvana.py"
    trainer_class = SegOnCarvanaTrainer
