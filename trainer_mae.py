"""Pretrain a ViT encoder as a masked autoencoder (He et al. 2022), then fine-tune it with trainer_vit.py.

python trainer_mae.py                                             # vit_ti_16 on ELPV solar cells (bundled), 64x64
python trainer_vit.py --pretrained_path Results/MAE/<run>/vit_ti_16_best_ckpt.pth --layer_decay 0.75
python trainer_vit.py --pretrained_path Results/MAE/<run>/vit_ti_16_best_ckpt.pth --linear_probe --lr 0.1
python trainer_mae.py --help                                      # every flag with its default
"""

from base.cli import exit_fast, main
from trainers.mae_trainer import MAETrainer

if __name__ == "__main__":
    exit_fast(main(MAETrainer))
