"""Evaluate a classification checkpoint: accuracy, confusion matrix, example predictions, accuracy per group."""

import torch

from base.evaluator import EvaluatorBase
from trainers.vanilla_trainer import VanillaTrainer
from utils.metrics import ClassificationMeter, accuracy_by_group
from utils.plots import save_confusion_matrix
from utils.tta import TTA, add_tta_argument, describe_tta


class VanillaEvaluator(EvaluatorBase):
    """Report top-1 (and top-5) accuracy, a confusion matrix and a few predictions.

    Where the data has groups (:attr:`data.classification.ClassificationData.groups`,
    e.g. ELPV's mono/poly cells) also ``per_group_top1``: ``{group: top-1 %}``.
    """

    PROG = "eval_vanilla.py"
    trainer_class = VanillaTrainer
    num_examples = 10
    #: what ``--tta`` averages: one class per image (a multi-label task would set ``"sigmoid"``)
    tta_activation = "softmax"

    @classmethod
    def add_arguments(cls, parser):
        super().add_arguments(parser)
        # in the base's "evaluation" group: --help keeps one group of the evaluator's own flags
        add_tta_argument(next(g for g in parser._action_groups if g.title == "evaluation"))

    def evaluate(self):
        task, data = self.task, self.task.data
        model = TTA(task.model, self.args.tta, self.tta_activation)
        tta = describe_tta(self.args.tta, self.tta_activation)
        if self.args.tta != "none":
            print(tta)
        meter = ClassificationMeter(data.num_classes)
        examples, preds, targets = [], [], []
        with torch.no_grad():
            for images, labels in task.loaders[self.args.split]:
                images, labels = task.to_device((images, labels))
                with task.autocast():
                    logits = model(images).float()
                meter.update(logits, labels, task.loss_fn(logits, labels))
                preds += logits.argmax(1).tolist()
                targets += labels.tolist()
                for pred, label in zip(logits.argmax(1).tolist(), labels.tolist()):
                    if len(examples) < self.num_examples:
                        examples.append({"prediction": data.class_names[pred], "label": data.class_names[label]})
        metrics = meter.compute()
        png = self.output_path(".png", kind="confusion")
        save_confusion_matrix(
            meter.confusion, data.class_names, png, title=f"{self.args.split}: top-1 {metrics['top1']:.2f}%"
        )
        print(
            f"{self.args.split} split, {meter.count} images: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        )
        print("confusion matrix (rows: label, columns: prediction):")
        print(meter.confusion.numpy())
        print("examples (prediction / label):", ", ".join(f"{e['prediction']}/{e['label']}" for e in examples))
        per_group = self.per_group_top1(preds, targets)
        print(f"wrote {self.output_path('.json')} and {png}")
        return {
            **metrics,
            "num_samples": meter.count,
            "class_names": data.class_names,
            "confusion_matrix": meter.confusion.tolist(),
            "examples": examples,
            "confusion_png": png,
            "tta": self.args.tta,
            "tta_description": tta,
            **({"per_group_top1": per_group} if per_group else {}),
        }

    def per_group_top1(self, preds, labels):
        """``{group: top-1 %}`` of the evaluated split, or ``None`` when its data has no groups.

        ``preds`` and ``labels`` are in the loader's order, which is the split's
        order: only the training loader shuffles.
        """
        groups = self.task.data.groups.get(self.args.split)
        if not groups:
            return None
        if len(groups) != len(preds):  # cannot happen with in-memory data; guard against dropped samples
            print(f"per-group top-1 skipped: {len(preds)} predictions for {len(groups)} grouped samples")
            return None
        per_group = accuracy_by_group(preds, labels, groups)
        print("per-group top-1 (%):", "  ".join(f"{k} {v:.2f}" for k, v in per_group.items()))
        return per_group
