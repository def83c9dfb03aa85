"""Segment new images with a trained checkpoint: one PNG mask (K = 1) or label map and colour picture per image.

python predict_seg.py --model_path Results/SegOnCarvana/<run>/UNet_best_ckpt.pth car1.jpg car2.jpg --out masks/
python predict_seg.py --model_path Results/Seg/<run>/UNet_best_ckpt.pth image.png --out labels/
"""

from base.cli import exit_fast, main
from evaluators.seg_predictor import SegPredictor

if __name__ == "__main__":
    exit_fast(main(SegPredictor))
