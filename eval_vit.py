"""Evaluate a ViTTrainer checkpoint on its run's test split.

python eval_vit.py --model_path Results/ViT/<run>/vit_ti_16_best_ckpt.pth
"""

from base.cli import exit_fast, main
from evaluators.vit_evaluator import ViTEvaluator

if __name__ == "__main__":
    exit_fast(main(ViTEvaluator))
