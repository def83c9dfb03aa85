"""Evaluate a classification checkpoint on its run's test split.

python eval_vanilla.py --model_path Results/Vanilla/<run>/Vanilla_best_ckpt.pth
"""

from base.cli import exit_fast, main
from evaluators.vanilla_evaluator import VanillaEvaluator

if __name__ == "__main__":
    exit_fast(main(VanillaEvaluator))
