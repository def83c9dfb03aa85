"""Evaluate a classification checkpoint: accuracy, confusion matrix, example predictions, accuracy per group;
for multi-label data mAP and each label's AP and F1."""

import math

import torch

from base.evaluator import EvaluatorBase
from trainers.multilabel import multilabel_meter
from trainers.vanilla_trainer import VanillaTrainer
from utils.metrics import ClassificationMeter, accuracy_by_group
from utils.plots import save_confusion_matrix
from utils.tta import TTA, add_tta_argument, describe_tta


class VanillaEvaluator(EvaluatorBase):
    """Report top-1 (and top-5) accuracy, a confusion matrix and a few predictions.

    Where the data has groups (:attr:`data.classification.ClassificationData.groups`,
    e.g. ELPV's mono/poly cells) also ``per_group_top1``: ``{group: top-1 %}``.

    Multi-label data (``--data_type ImageCSV``): :meth:`evaluate_multilabel` instead.
    """

    PROG = "eval_vanilla.py"
    trainer_class = VanillaTrainer
    num_examples = 10

    @classmethod
    def add_arguments(cls, parser):
        super().add_arguments(parser)
        # in the base's "evaluation" group: --help keeps one group of the evaluator's own flags
        add_tta_argument(next(g for g in parser._action_groups if g.title == "evaluation"))

    def evaluate(self):
        task, data = self.task, self.task.data
        activation = "sigmoid" if data.multilabel else "softmax"  # what --tta averages: per label, or per image
        model = TTA(task.model, self.args.tta, activation)
        tta = describe_tta(self.args.tta, activation)
        if self.args.tta != "none":
            print(tta)
        if data.multilabel:
            return {**self.evaluate_multilabel(model), "tta": self.args.tta, "tta_description": tta}
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

    def evaluate_multilabel(self, model):
        """mAP, micro and mean F1 of ``model`` (the task's, or its ``--tta`` wrapper) and a table of each label's
        positives, AP and F1 at the run's ``--threshold`` (:class:`utils.multilabel_metrics.MultiLabelMeter`;
        ``--threshold`` on this command line overrides it).

        No confusion matrix: with several labels per image there is no single (label, prediction) pair to count;
        each label's F1 (its own 2x2 table) takes its place. A label without positives in the split has no AP:
        ``null`` in the JSON, left out of ``map``.

        Returns:
            ``{"loss", "map", "micro_f1", "mean_f1", "threshold", "num_samples", "multilabel": True,
            "class_names", "per_label": {name: {"positives", "ap", "f1"}}}``.
        """
        task, data = self.task, self.task.data
        metrics = multilabel_meter(task, model, task.loaders[self.args.split]).compute()
        threshold = task.args.threshold
        print(
            f"{self.args.split} split, {metrics['count']} images: loss {metrics['loss']:.4f}  "
            f"mAP {metrics['map']:.4f}  micro F1 {metrics['micro_f1']:.4f}  "
            f"mean F1 {metrics['mean_f1']:.4f} (threshold {threshold:g})"
        )
        width = max(len("label"), *(len(n) for n in data.class_names))
        print(f"{'label':<{width}}  positives      AP  F1@{threshold:g}")
        per_label = {}
        for name, n, ap, f1 in zip(data.class_names, metrics["positives"], metrics["ap"], metrics["f1"]):
            print(f"{name:<{width}}  {n:>9}  {'-' if math.isnan(ap) else f'{ap:.4f}':>6}  {f1:.4f}")
            per_label[name] = {"positives": n, "ap": None if math.isnan(ap) else ap, "f1": f1}
        print(f"wrote {self.output_path('.json')}")
        return {
            **{k: (None if math.isnan(metrics[k]) else metrics[k]) for k in ("loss", "map", "micro_f1", "mean_f1")},
            "threshold": threshold,
            "num_samples": metrics["count"],
            "multilabel": True,
            "class_names": data.class_names,
            "per_label": per_label,
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
