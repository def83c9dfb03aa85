"""What a user pays on every command: start-up, and the overhead of a short run.

    python bench/startup.py [--repeats 3]

Prints, as medians over ``--repeats`` fresh processes (seconds of wall time):

* ``import torch``: the floor every PyTorch script pays;
* ``trainer_vanilla.py --help`` and its ratio to that floor;
* ``trainer_vanilla.py --epochs 1`` (Digits, CPU) against the floor plus
  the run's own compute (the epoch, its validation and the test, timed
  inside the process; the setup before it, data loading and TensorBoard
  included, is overhead and is reported apart), and that ratio.

The ratios are what to compare across machines: both sides are measured in
the same invocation of this script.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs one epoch in-process and prints how long the trainer's own work took (seconds).
COMPUTE = """
import json, sys, time
sys.path.insert(0, {root!r})
from trainers.vanilla_trainer import VanillaTrainer
trainer = VanillaTrainer.from_argv({argv!r})
start = time.perf_counter()
trainer.setup()
built = time.perf_counter()
trainer.train()
trainer.test()
done = time.perf_counter()
trainer.release()
print(json.dumps({{"setup": built - start, "compute": done - built}}))
"""


def wall(cmd, cwd=ROOT):
    """Seconds from starting ``cmd`` (a list) to its exit; raises ``CalledProcessError`` on failure."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per measurement")
    args = parser.parse_args(argv)
    py = sys.executable
    with tempfile.TemporaryDirectory() as out:
        run = ["--epochs", "1", "--gpu_devices", "cpu", "--output_dir", out]
        rows = {"import torch": [], "--help": [], "1-epoch run": [], "run setup": [], "run compute": []}
        for _ in range(args.repeats):
            rows["import torch"].append(wall([py, "-c", "import torch"]))
            rows["--help"].append(wall([py, "trainer_vanilla.py", "--help"]))
            rows["1-epoch run"].append(wall([py, "trainer_vanilla.py", *run]))
            done = subprocess.run(
                [py, "-c", COMPUTE.format(root=ROOT, argv=run)], cwd=ROOT, check=True, capture_output=True, text=True
            )
            times = json.loads(done.stdout.strip().splitlines()[-1])
            rows["run setup"].append(times["setup"])
            rows["run compute"].append(times["compute"])
    med = {k: statistics.median(v) for k, v in rows.items()}
    for key, value in med.items():
        print(f"{key:>14}: {value:6.2f} s  (runs: {', '.join(f'{v:.2f}' for v in rows[key])})")
    print(f"--help / import torch: {med['--help'] / med['import torch']:.2f} x (target <= 1.3)")
    floor = med["import torch"] + med["run compute"]
    print(f"1-epoch run / (import torch + its compute): {med['1-epoch run'] / floor:.2f} x (target <= 1.5)")


if __name__ == "__main__":
    main()
