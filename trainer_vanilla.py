"""Train an image classifier.

python trainer_vanilla.py                                   # Digits, bundled with scikit-learn
python trainer_vanilla.py --model_type SmallCNN --data_type FashionMNIST --data_dir ~/data
python trainer_vanilla.py --help                            # every flag with its default
"""

from base.cli import exit_fast, main
from trainers.vanilla_trainer import VanillaTrainer

if __name__ == "__main__":
    exit_fast(main(VanillaTrainer))
