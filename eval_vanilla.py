"""Evaluate a classification checkpoint on its run's test split.

    python eval_vanilla.py --model_path Results/Vanilla/<run>/Vanilla_best_ckpt.pth
"""
import sys

from base.cli import main
from evaluators.vanilla_evaluator import VanillaEvaluator

if __name__ == "__main__":
    sys.exit(main(VanillaEvaluator))
