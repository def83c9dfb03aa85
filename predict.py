"""Classify image files with a trained classifier checkpoint (VanillaTrainer or ViTTrainer); prints the top-k.

python predict.py --model_path Results/Vanilla/<run>/Vanilla_best_ckpt.pth digit1.png digit2.png --topk 3
python predict.py --model_path Results/ViT/<run>/vit_ti_16_best.safetensors cell.png --output_json preds.json
"""

from base.cli import exit_fast, main
from evaluators.classifier_predictor import ClassifierPredictor

if __name__ == "__main__":
    exit_fast(main(ClassifierPredictor))
