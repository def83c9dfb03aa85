"""Train a ViT, Swin, ResNet or timm classifier with the "How to train your ViT" recipe.

python trainer_vit.py                                         # vit_ti_16 on ELPV solar cells (bundled)
python trainer_vit.py --model_type resnet18 --elpv_task binary --randaugment 2 9 --mixup_alpha 0.2
python trainer_vit.py --data_type ImageFolder --data_dir ~/data/imagenette --image_size 224 --patch_size 16
python trainer_vit.py --model_type timm/resnet18.a1_in1k --pretrained --freeze_epochs 1   # fine-tune timm's weights
python trainer_vit.py --help                                  # every flag with its default
"""

from base.cli import exit_fast, main
from trainers.vit_trainer import ViTTrainer

if __name__ == "__main__":
    exit_fast(main(ViTTrainer))
