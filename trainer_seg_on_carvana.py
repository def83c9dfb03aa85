"""Train a binary car segmenter on data in Kaggle's Carvana layout.

python -m data.make_synthetic_carvana --out Dataset/SyntheticCarvana --cars 20   # no download needed
python trainer_seg_on_carvana.py --model_type UNet --data_dir Dataset/SyntheticCarvana
python trainer_seg_on_carvana.py --model_type UNetPlusPlus --deep_supervision --data_dir Dataset/Carvana
python trainer_seg_on_carvana.py --help                      # every flag with its default
"""

from base.cli import exit_fast, main
from trainers.seg_on_carvana_trainer import SegOnCarvanaTrainer

if __name__ == "__main__":
    exit_fast(main(SegOnCarvanaTrainer))
