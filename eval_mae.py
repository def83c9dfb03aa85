"""Evaluate an MAE checkpoint: reconstruction loss and k-NN top-1 on its run's test split; --viz draws reconstructions.

python eval_mae.py --model_path Results/MAE/<run>/vit_ti_16_best_ckpt.pth --viz
"""

from base.cli import exit_fast, main
from evaluators.mae_evaluator import MAEEvaluator

if __name__ == "__main__":
    exit_fast(main(MAEEvaluator))
