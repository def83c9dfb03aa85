"""Evaluate a segmentation checkpoint of trainer_seg.py on its run's test split; --viz saves pictures.

python eval_seg.py --model_path Results/Seg/<run>/UNet_best_ckpt.pth --viz --save_path ./test_viz/
"""

from base.cli import exit_fast, main
from evaluators.seg_evaluator import SegEvaluator

if __name__ == "__main__":
    exit_fast(main(SegEvaluator))
