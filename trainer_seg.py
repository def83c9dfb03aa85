"""Train a segmenter of K classes (the binary case with --num_classes 1); see docs/SEGMENTATION.md.

python -m data.make_synthetic_shapes --out Dataset/Shapes
python trainer_seg.py --data_dir Dataset/Shapes --num_classes 3 --class_names background,red,blue
"""

from base.cli import exit_fast, main
from trainers.seg_trainer import SegTrainer

if __name__ == "__main__":
    exit_fast(main(SegTrainer))
