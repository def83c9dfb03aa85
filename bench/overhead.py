"""What the trainer costs over a hand-written loop doing the same work (and over Lightning, when installed).

    python bench/overhead.py                    # CPU cases, 3 repeats (4-5 minutes on 2 cores; 7 with Lightning)
    python bench/overhead.py --repeats 5 --cases digits_mlp,small_cnn
    python bench/overhead.py --against ../main-checkout  # also time another checkout's trainer, interleaved

Each case trains the same model on the same in-memory data with the same
settings (AdamW, fused, with a per-step cosine schedule; a validation with loss
and top-1 every epoch; batch size; 2 threads) three ways, each in a fresh
process, interleaved ``--repeats`` times:

* ``bare``: a plain PyTorch loop (DataLoader with shuffling, forward, backward,
  step, schedule; a validation loop);
* ``ours``: a :class:`base.trainer.TrainerBase` subclass with everything a
  run normally does: the log, TensorBoard, ``metrics.csv``, ``last``/``best``
  checkpoints and the safetensors export at each validation, the non-finite
  check, resumable sampling;
* ``lightning``: a ``LightningModule`` with its default Trainer (checkpointing,
  TensorBoard logger, progress bar), if ``lightning`` imports.

Reported per case: seconds per epoch (training and validation; setup, data
building and the final test left out), the ratio to ``bare`` (median and min
over the repeats), the overhead per optimizer step in microseconds, and the
peak resident memory while training (bytes, from ``VmHWM`` reset before
training; on CUDA ``max_memory_allocated``) and its ratio. Besides the
median of the per-repeat ratios, the ratio of the fastest runs of each kind
(on a shared or virtual machine the slow runs are the disturbed ones). Cases:
``digits_mlp`` (Digits, 8x8, an MLP, batch 64: tiny steps, where overhead
shows), ``fmnist_mlp`` (60,000 x 1x28x28 random tensors, MLP, batch 128),
``small_cnn`` (4,096 x 3x32x32, SmallCNN, batch 128), and on a GPU
``resnet18_32`` (50,000 x 3x32x32, torchvision ResNet-18, batch 256, bf16).
The last line reads ``worst ratio X.XX``: the largest median ratio of ``ours``.

``--against DIR`` adds a fourth kind, ``against``: the ``ours`` case of another checkout of this project
(its own ``bench/overhead.py`` and code, e.g. the previous main), run in the same interleaved rounds, so a
change to the trainer is measured against the code before it in one run on one machine. A second table
gives ``ours/against`` (median of the per-round ratios, and of the fastest runs).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# name: (samples, image shape, classes, model, batch size, epochs, device)
CASES = {
    "digits_mlp": (None, (1, 8, 8), 10, "Vanilla", 64, 30, "cpu"),
    "fmnist_mlp": (60_000, (1, 28, 28), 10, "Vanilla", 128, 1, "cpu"),
    "small_cnn": (4_096, (3, 32, 32), 10, "SmallCNN", 128, 1, "cpu"),
    "resnet18_32": (50_000, (3, 32, 32), 10, "resnet18", 256, 3, "cuda"),
}
LR, WEIGHT_DECAY, SEED = 1e-3, 1e-4, 0


def case_data(name):
    """``(train, val)`` TensorDatasets of the case: Digits as the trainers read it, else seeded random tensors."""
    import torch
    from torch.utils.data import TensorDataset

    samples, shape, classes = CASES[name][:3]
    if samples is None:
        from data.classification import digits_arrays

        images, labels = digits_arrays()
        x = torch.as_tensor(images, dtype=torch.float32).reshape(-1, *shape) / 16.0
        y = torch.as_tensor(labels, dtype=torch.int64)
        return TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:])
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(samples + samples // 8, *shape, generator=gen)
    y = torch.randint(0, classes, (len(x),), generator=gen)
    return TensorDataset(x[:samples], y[:samples]), TensorDataset(x[samples:], y[samples:])


def make_model(name):
    import torch

    _, shape, classes, kind = CASES[name][:4]
    torch.manual_seed(SEED)
    if kind == "resnet18":
        import torchvision

        return torchvision.models.resnet18(num_classes=classes)
    from model.classifiers import build_classifier

    return build_classifier(kind, shape, classes)


def peak_reset():
    """Start a new peak: ``VmHWM`` (Linux ``clear_refs``) or CUDA's peak counter."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_bytes(device):
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def run_bare(name):
    import torch
    from torch.utils.data import DataLoader

    from utils.metrics import ClassificationMeter

    _, _, classes, _, batch, epochs, device = CASES[name]
    train, val = case_data(name)
    model = make_model(name).to(device)
    loader = DataLoader(train, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(SEED))
    val_loader = DataLoader(val, batch_size=batch)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    loss_fn = torch.nn.CrossEntropyLoss()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else None
    peak_reset()
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with amp or torch.autocast("cpu", enabled=False):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        meter = ClassificationMeter(classes)
        with torch.no_grad():
            for x, y in val_loader:
                x, y = x.to(device), y.to(device)
                logits = model(x).float()
                meter.update(logits, y, loss_fn(logits, y))
        meter.compute()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / epochs, len(loader), peak_bytes(device)


def run_ours(name, out):
    import torch

    from base.trainer import TrainerBase
    from utils.metrics import ClassificationMeter

    _, _, classes, _, batch, epochs, device = CASES[name]

    class Bench(TrainerBase):
        monitor, monitor_mode = "top1", "max"

        @classmethod
        def add_arguments(cls, parser):
            parser.add_argument("--model_type", default=name)

        def build_datasets(self):
            train, val = case_data(name)
            return {"train": train, "val": val}

        def build_model(self):
            return make_model(name)

        def build_loss(self):
            return torch.nn.CrossEntropyLoss()

        def train_step(self, batch):
            x, y = batch
            return {"loss": self.loss_fn(self.model(x), y)}

        def validate(self, model, loader):
            meter = ClassificationMeter(classes)
            for x, y in loader:
                x, y = self.to_device((x, y))
                with self.autocast():
                    logits = self.model(x).float()
                meter.update(logits, y, self.loss_fn(logits, y))
            return meter.compute()

    trainer = Bench.from_argv(
        [
            "--output_dir",
            out,
            "--epochs",
            str(epochs),
            "--batch_size",
            str(batch),
            "--lr",
            str(LR),
            "--weight_decay",
            str(WEIGHT_DECAY),
            "--seed",
            str(SEED),
            "--gpu_devices",
            device,
            "--amp",
            str(device == "cuda"),
        ]
    )
    # Timed around train() (fit = setup, train, test), not by a hook: a run without hooks is the common
    # case, and hooks switch off writing `last` as a link to a `best` saved at the same step.
    train, clock = trainer.train, {}

    def timed_train():
        peak_reset()
        start = time.perf_counter()
        try:
            return train()
        finally:
            if device == "cuda":
                torch.cuda.synchronize()
            clock.update(seconds=time.perf_counter() - start, peak=peak_bytes(device))

    trainer.train = timed_train
    trainer.fit()
    steps = math.ceil(len(trainer.datasets["train"]) / batch)
    return clock["seconds"] / epochs, steps, clock["peak"]


def run_lightning(name, out):
    import lightning
    import torch
    from torch.utils.data import DataLoader

    from utils.metrics import ClassificationMeter

    _, _, classes, _, batch, epochs, device = CASES[name]
    train, val = case_data(name)

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.loss_fn = make_model(name), torch.nn.CrossEntropyLoss()

        def training_step(self, b, _):
            x, y = b
            loss = self.loss_fn(self.model(x), y)
            self.log("train/loss", loss)
            return loss

        def on_validation_epoch_start(self):
            self.meter = ClassificationMeter(classes)

        def validation_step(self, b, _):
            x, y = b
            logits = self.model(x).float()
            self.meter.update(logits, y, self.loss_fn(logits, y))

        def on_validation_epoch_end(self):
            self.log("val/top1", self.meter.compute()["top1"])

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
            total = epochs * math.ceil(len(train) / batch)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class Clock(lightning.Callback):
        def on_train_start(self, *_):
            peak_reset()
            self.start = time.perf_counter()

        def on_train_end(self, *_):
            self.seconds, self.peak = time.perf_counter() - self.start, peak_bytes(device)

    clock = Clock()
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        default_root_dir=out,
        callbacks=[clock],
        num_sanity_val_steps=0,
        precision="bf16-mixed" if device == "cuda" else "32-true",
    )
    trainer.fit(Module(), DataLoader(train, batch_size=batch, shuffle=True), DataLoader(val, batch_size=batch))
    return clock.seconds / epochs, math.ceil(len(train) / batch), clock.peak


def worker(kind, name):
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as out:
        result = {"bare": run_bare, "ours": lambda n: run_ours(n, out), "lightning": lambda n: run_lightning(n, out)}[
            kind
        ](name)
    print("RESULT " + json.dumps(dict(zip(("seconds", "steps", "peak"), result))))


def measure(kind, name, against=None):
    """Run one ``kind`` of case ``name`` in a fresh process; ``against``: the checkout whose ``ours`` the
    ``against`` kind runs. Returns ``{"seconds", "steps", "peak"}``.

    Raises:
        RuntimeError: the run failed (its stderr's tail in the message).
    """
    tree = against if kind == "against" else ROOT
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(tree, "bench", "overhead.py"),
            "--worker",
            "ours" if kind == "against" else kind,
            name,
        ],
        cwd=tree,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main():
    import importlib.util

    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each kind per case")
    parser.add_argument("--cases", default="", help="comma list (default: the CPU cases, and resnet18_32 on a GPU)")
    parser.add_argument("--no_lightning", action="store_true", help="leave Lightning out even when installed")
    parser.add_argument("--against", default="", help="another checkout of this project: time its `ours` too")
    a = parser.parse_args()
    if a.against and not os.path.isfile(os.path.join(a.against, "bench", "overhead.py")):
        parser.error(f"--against {a.against}: no bench/overhead.py there (a checkout of this project)")
    names = (
        a.cases.split(",") if a.cases else [n for n, c in CASES.items() if c[-1] == "cpu" or torch.cuda.is_available()]
    )
    kinds = ["bare", "ours"] + (["lightning"] if importlib.util.find_spec("lightning") and not a.no_lightning else [])
    kinds += ["against"] if a.against else []
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, 2 threads; kinds: {', '.join(kinds)}; {a.repeats} repeats"
    )
    print(
        "| case | steps/epoch | bare s/epoch | ours s/epoch | ours/bare median | ours/bare of fastest | "
        "ours overhead us/step | peak MB bare / ours (ratio) | lightning/bare median | lightning/bare of fastest |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst, compared = 0.0, []
    for name in names:
        runs = {k: [] for k in kinds}
        for _ in range(a.repeats):
            for kind in kinds:
                runs[kind].append(measure(kind, name, a.against))
        sec = {k: [r["seconds"] for r in v] for k, v in runs.items()}
        ratios = {k: [s / b for s, b in zip(sec[k], sec["bare"])] for k in kinds}
        steps = runs["bare"][0]["steps"]
        overhead = (statistics.median(sec["ours"]) - statistics.median(sec["bare"])) / steps * 1e6
        peak = {k: statistics.median(r["peak"] for r in v) for k, v in runs.items()}
        worst = max(worst, statistics.median(ratios["ours"]))
        light = (
            f"{statistics.median(ratios['lightning']):.3f} | {min(sec['lightning']) / min(sec['bare']):.3f}"
            if "lightning" in kinds
            else "not installed | not installed"
        )
        print(
            f"| {name} | {steps} | {statistics.median(sec['bare']):.4f} | {statistics.median(sec['ours']):.4f} | "
            f"{statistics.median(ratios['ours']):.3f} | {min(sec['ours']) / min(sec['bare']):.3f} | {overhead:.0f} | "
            f"{peak['bare'] / 2**20:.0f} / {peak['ours'] / 2**20:.0f} ({peak['ours'] / peak['bare']:.3f}) | "
            f"{light} |"
        )
        if a.against:
            vs = [o / t for o, t in zip(sec["ours"], sec["against"])]
            compared.append(
                f"| {name} | {statistics.median(sec['against']):.4f} | {statistics.median(sec['ours']):.4f} | "
                f"{statistics.median(vs):.3f} | {min(sec['ours']) / min(sec['against']):.3f} |"
            )
    if compared:
        print(f"\nagainst {os.path.abspath(a.against)}:")
        print("| case | against s/epoch | ours s/epoch | ours/against median | ours/against of fastest |")
        print("|---|---|---|---|---|")
        print("\n".join(compared))
    print(f"worst ratio {worst:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
