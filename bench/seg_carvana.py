"""Benchmark: UNet on generated Carvana-layout data until validation Dice >= a target, timed.

    python bench/seg_carvana.py --gpu_devices cpu        # 20 cars x 6 views, 384x256 -> 128x192
    python bench/seg_carvana.py --width 1918 --height 1280 --target 0 --gpu_devices 0 --amp \
        --batch_size 8 --num_workers 8 --epochs 3          # Carvana's size at --img_scale 0.5, on a GPU

Generates the data in a temporary folder, trains ``SegOnCarvanaTrainer``
(defaults plus the flags given), and prints one row per validation: seconds
since training started (data generation and imports excluded), validation
Dice, and the training throughput in images/s. Exits 1 if ``--target`` is not
reached within ``--budget_s`` seconds.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from base.hooks import HookBase  # noqa: E402
from data.make_synthetic_carvana import generate  # noqa: E402
from trainers.seg_on_carvana_trainer import SegOnCarvanaTrainer  # noqa: E402


class Clock(HookBase):
    """Records (seconds since before_train, epoch, val Dice, training images/s) at each epoch end.

    Throughput is images trained over wall time minus the validations' time, so
    it includes data loading and the optimizer, not validation.
    """

    def __init__(self):
        self.rows, self.images, self.val_seconds = [], 0, 0.0

    def before_train(self):
        self.start = time.perf_counter()

    def after_epoch(self):
        metrics = self.trainer.last_metrics
        self.images += len(self.trainer.datasets["train"])  # every epoch here is a whole one
        self.val_seconds += metrics.get("val_seconds", 0.0)
        seconds = time.perf_counter() - self.start
        self.rows.append(
            (
                seconds,
                self.trainer.epoch,
                metrics.get("val_dice", float("nan")),
                self.images / max(seconds - self.val_seconds, 1e-9),
            )
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cars", type=int, default=20)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--width", type=int, default=384, help="generated image width (Carvana: 1918)")
    parser.add_argument("--height", type=int, default=256, help="generated image height (Carvana: 1280)")
    parser.add_argument("--target", type=float, default=0.90, help="validation Dice to reach")
    parser.add_argument("--budget_s", type=float, default=180.0, help="seconds allowed to reach it")
    args, trainer_argv = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "carvana")
        generate(data, cars=args.cars, views=args.views, width=args.width, height=args.height, seed=0)
        trainer = SegOnCarvanaTrainer.from_argv(
            [
                "--model_type",
                "UNet",
                "--data_dir",
                data,
                "--img_scale",
                "0.5",
                "--output_dir",
                os.path.join(tmp, "out"),
                *trainer_argv,
            ]
        )
        clock = Clock()
        trainer.build_hooks = lambda: [clock]
        test = trainer.fit()
    print(f"device {trainer.device}, input {trainer.data.input_size}, train images {len(trainer.datasets['train'])}")
    print("seconds  epoch  val_dice  train images/s")
    reached = None
    for seconds, epoch, dice, throughput in clock.rows:
        print(f"{seconds:7.1f}  {epoch:5d}  {dice:8.4f}  {throughput:8.1f}")
        if reached is None and dice >= args.target:
            reached = seconds
    print(
        f"test dice {test['dice']:.4f}; val dice >= {args.target} "
        + (f"after {reached:.1f} s" if reached is not None else "never reached")
    )
    return 0 if reached is not None and reached <= args.budget_s else 1


if __name__ == "__main__":
    sys.exit(main())
