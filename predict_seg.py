"""Segment new images with a trained checkpoint; writes one PNG mask per image.

python predict_seg.py --model_path Results/SegOnCarvana/<run>/UNet_best_ckpt.pth car1.jpg car2.jpg --out masks/
"""

from base.cli import exit_fast, main
from evaluators.seg_predictor import SegPredictor

if __name__ == "__main__":
    exit_fast(main(SegPredictor))
