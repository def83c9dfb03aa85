"""Evaluate a segmentation checkpoint on its run's test split; --viz saves pictures.

python eval_seg_on_carvana.py --model_path Results/SegOnCarvana/<run>/UNet_best_ckpt.pth --viz --save_path ./test_viz/
"""

from base.cli import exit_fast, main
from evaluators.seg_on_carvana_evaluator import SegOnCarvanaEvaluator

if __name__ == "__main__":
    exit_fast(main(SegOnCarvanaEvaluator))
