"""Training throughput of one process against the same run under ``torchrun --nproc_per_node N``.

    python bench/ddp_throughput.py                                  # GPU: ResNet-50, 224x224, bf16, channels-last
    python bench/ddp_throughput.py --nproc 2 --model_type resnet18 --image_size 32 --batch_size 32 --steps 30 \\
        --gpu_devices cpu --amp false --channels_last false          # a CPU check of the script itself

Both runs train :class:`trainers.vit_trainer.ViTTrainer` on the same
in-memory random images (no decoding: the loop and the launcher are what is
measured), with the same flags. Each process times its optimizer steps after
``--warmup`` steps (seconds, CUDA synchronised) and reports images/s; the
torchrun figure is the sum over its processes. Both runs get the same
``OMP_NUM_THREADS`` (torchrun would otherwise set 1). Printed: both figures and their
ratio (with ``--nproc 1``, the cost of the launcher and of the distributed code
paths over a plain run).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def worker(argv, report, warmup, samples):
    """Train in this process (or this torchrun rank) and write ``{"images_per_s", "rank"}`` to ``report.<rank>``."""
    import torch
    from torch.utils.data import TensorDataset

    from base.hooks import HookBase
    from trainers.vit_trainer import ViTTrainer

    class Timer(HookBase):
        def after_step(self):
            t = self.trainer
            if t.global_step == warmup:
                self.start = self._now()
            self.end, self.steps = self._now(), t.global_step - warmup

        def _now(self):
            if self.trainer.device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter()

    class SyntheticTrainer(ViTTrainer):
        def build_datasets(self):
            a, side = self.args, self.args.image_size
            gen = torch.Generator().manual_seed(0)
            images = torch.rand(samples, 3, side, side, generator=gen)
            labels = torch.randint(0, 10, (samples,), generator=gen)
            self.data = type(
                "Data",
                (),
                {"num_classes": 10, "input_shape": (3, side, side), "class_names": [str(i) for i in range(10)]},
            )()
            self.mix = None
            small = TensorDataset(images[: a.batch_size], labels[: a.batch_size])
            return {"train": TensorDataset(images, labels), "val": small}

        def build_hooks(self):
            self.timer = Timer()
            return [self.timer]

    trainer = SyntheticTrainer.from_argv(argv)
    trainer.fit()
    timer = trainer.timer
    images = timer.steps * trainer.args.batch_size * trainer.args.accum_steps
    with open(f"{report}.{trainer.rank}", "w") as f:
        json.dump({"images_per_s": images / (timer.end - timer.start), "rank": trainer.rank}, f)


def measure(launcher, argv, report):
    command = [*launcher, os.path.abspath(__file__), "--worker", report, *argv]
    # torchrun sets OMP_NUM_THREADS=1 in its processes unless it is set: give both runs the same threads.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=env)
    rates = []
    for name in os.listdir(os.path.dirname(report)):
        if name.startswith(os.path.basename(report) + "."):
            with open(os.path.join(os.path.dirname(report), name)) as f:
                rates.append(json.load(f)["images_per_s"])
            os.remove(os.path.join(os.path.dirname(report), name))
    return sum(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, default=1, help="torchrun processes")
    parser.add_argument("--model_type", default="resnet50")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=128, help="per process")
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the timing")
    parser.add_argument("--gpu_devices", default=None)
    parser.add_argument("--amp", default="true")
    parser.add_argument("--channels_last", default="true")
    parser.add_argument("--compile", default="false")
    a = parser.parse_args()
    samples = a.batch_size * a.nproc * (a.steps + 1)
    with tempfile.TemporaryDirectory() as out:
        argv = [
            "--samples",
            str(samples),
            "--warmup",
            str(a.warmup),
            "--",
            "--model_type",
            a.model_type,
            "--image_size",
            str(a.image_size),
            "--batch_size",
            str(a.batch_size),
            "--max_steps",
            str(a.steps),
            "--amp",
            a.amp,
            "--amp_dtype",
            "bfloat16",
            "--channels_last",
            a.channels_last,
            "--compile",
            a.compile,
            "--output_dir",
            out,
            "--log_every_steps",
            "50",
            "--warmup_steps",
            "0",
        ]
        argv += ["--gpu_devices", a.gpu_devices] if a.gpu_devices else []
        report = os.path.join(out, "report")
        plain = measure([sys.executable], argv, report)
        ddp = measure(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}"], argv, report
        )
    print(f"plain: {plain:.1f} images/s | torchrun x{a.nproc}: {ddp:.1f} images/s | ratio {ddp / plain:.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        report, rest = sys.argv[2], sys.argv[3:]
        split = rest.index("--")
        opts = dict(zip(rest[:split:2], rest[1:split:2]))
        worker(rest[split + 1 :], report, int(opts["--warmup"]), int(opts["--samples"]))
    else:
        main()
