"""Evaluate a ViTTrainer checkpoint: top-1/top-5, per-class and per-group accuracy, confusion matrix."""

from evaluators.vanilla_evaluator import VanillaEvaluator
from trainers.vit_trainer import ViTTrainer


class ViTEvaluator(VanillaEvaluator):
    """:class:`VanillaEvaluator` for :class:`ViTTrainer` runs, plus each class's accuracy (%)."""

    PROG = "eval_vit.py"
    trainer_class = ViTTrainer

    def evaluate(self):
        results = super().evaluate()
        if results.get("multilabel"):  # each label's AP and F1 are there already
            return results
        per_class = {}
        for name, row in zip(results["class_names"], results["confusion_matrix"]):
            per_class[name] = 100.0 * row[results["class_names"].index(name)] / sum(row) if sum(row) else float("nan")
        print("per-class top-1 (%):", "  ".join(f"{k} {v:.2f}" for k, v in per_class.items()))
        return {**results, "per_class_top1": per_class}
