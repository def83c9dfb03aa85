"""Training images/s on one GPU: a bare training step, our trainer on in-memory data, our trainer on JPEG files.

    python bench/throughput.py                                # GPU: the four rows below (< 10 min on one H100)
    python bench/throughput.py --models resnet50 --batch_size 256 --steps 100 --output_json r50.json
    python bench/throughput.py --tiny --gpu_devices cpu       # CPU smoke run of the script itself
    python bench/throughput.py --models resnet50 --profile prof/ --memory_workers 8   # where (b) loses time

Rows (``--models``): ``resnet50`` and ``vit_b_16`` (patch 16) at ``--image_size`` 224, ``vit_b_16+compile``,
and ``unet`` (the Carvana task's UNet, width 16) at 320x480; bf16 autocast and channels-last everywhere. Each
is timed three ways, in images/s over ``--steps`` optimizer steps after ``--warmup`` steps (wall seconds, CUDA
synchronised only at both ends of the timed steps):

(a) bare: a hand-written step on one batch already on the device, normalised to float once beforehand: forward
    under ``torch.autocast``, the task's loss, backward, fused ``AdamW.step``, ``zero_grad``; the trainer's model
    and loss, the same batch size, ``cudnn.benchmark`` on as in the trainer (without ``--deterministic``). The
    ceiling.
(b) trainer: ``ViTTrainer`` / ``SegOnCarvanaTrainer`` with the same flags and the trainer's defaults, on random
    uint8 images in memory (its own DataLoader with ``--num_workers auto``, or ``--memory_workers``; the uint8
    batch copied a step ahead and normalised on the device by its ``InputStage``), timed by a hook from the end
    of step W to the end of step W+N.
(c) files: ``ViTTrainer`` on a JPEG ImageFolder written once to a temporary folder (2,000 distinct random files
    of about 500x375 in 10 classes, hard-linked up to the count the steps need) with ``--randaugment 2 9
    --hflip 0.5`` and ``--num_workers auto`` (or ``--num_workers``): workers decode to uint8, the device
    normalises; it warms up for at least 2 and times at least 8 steps per worker (a short window would count
    batches the workers queued before it). Classifiers only (``n/a`` for unet).

(b) and (c) run with ``--grad_clip 0`` (ViTTrainer clips at 1.0 by default) so all three do the same arithmetic,
and without a test split. Printed to stdout: the command, device, torch version, one markdown table and the
issue's targets, (b)/(a) >= 0.97 for every row and (c)/(a) >= 0.90 for resnet50; ratios are of the printed
figures. ``--tiny``: resnet18, and vit_ti_16 (patch 8), at 32x32, a UNet of width 4 at 64x96, 4 images a batch,
1 + 3 steps, 40 JPEGs of about 100x75 (``auto`` is 0 workers on a CPU: read in the main process); on the CPU
autocast is off (bf16 without CPU support is emulated, 10-50x slower) and ``--compile`` uses dynamo's ``eager``
backend (inductor's C++ build takes minutes on a small CPU). Exit status 2, one line on stderr, without CUDA
unless ``--tiny``.
"""

import argparse
import functools
import gc
import json
import math
import multiprocessing
import os
import shlex
import shutil
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from base.config.parse import ConfigError  # noqa: E402
from base.config.trainer_flags import resolve_workers, workers_type  # noqa: E402
from base.hooks import HookBase  # noqa: E402
from base.loop.input_stage import InputStage  # noqa: E402
from base.runtime.device import select_device  # noqa: E402

# row -> (task, model_type, --compile, default batch); --tiny swaps in TINY_MODELS
ROWS = {
    "resnet50": ("cls", "resnet50", False, 128),
    "vit_b_16": ("cls", "vit_b_16", False, 64),
    "vit_b_16+compile": ("cls", "vit_b_16", True, 64),
    "unet": ("seg", "UNet", False, 8),
}
TINY_MODELS = {"resnet50": "resnet18", "vit_b_16": "vit_ti_16", "UNet": "UNet"}
VAL_FRACTION = 0.01  # of the JPEG folder; (b) validates on one batch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Profile:
    """``torch.profiler`` over a span of steps, its table (25 ops by self CPU time) written to ``path``."""

    def __init__(self, path):
        self.path, self.profiler = path, None

    def start(self):
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.profiler = profile(activities=activities)
        self.profiler.__enter__()

    def stop(self):
        self.profiler.__exit__(None, None, None)
        table = self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(table)


class Timer(HookBase):
    """Wall seconds from the end of optimizer step ``first`` to the end of step ``last``; syncs CUDA there only.

    With ``profile`` (a :class:`Profile`) the timed steps are also profiled (and slowed by it)."""

    def __init__(self, first, last, profile=None):
        self.first, self.last, self.start, self.end, self.profile = first, last, None, None, profile

    def after_step(self):
        step = self.trainer.global_step
        if step in (self.first, self.last):
            sync(self.trainer.device)
            if self.profile and step == self.last:
                self.profile.stop()
            setattr(self, "start" if step == self.first else "end", time.perf_counter())
            if self.profile and step == self.first:
                self.profile.start()


def synthetic(task, batch, size):
    """Two batches of random ``images`` uint8 (2B, 3, H, W), as the image datasets hand out, and targets: labels
    int64 (2B,) in 0..9, or masks float32 (2B, 1, H, W) in {0, 1}."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2 * batch, 3, *size), dtype=torch.uint8, generator=gen)
    if task == "cls":
        return images, torch.randint(0, 10, (2 * batch,), generator=gen)
    return images, (torch.rand(2 * batch, 1, *size, generator=gen) > 0.5).float()


def measured(task, warmup, steps, data=None, profile=None):
    """The task's trainer class timed by a :class:`Timer` (``.timer``), without a test split; with ``data`` =
    :func:`synthetic` tensors it trains on them for one epoch of exactly ``--max_steps`` batches."""
    from trainers.seg_on_carvana_trainer import SegOnCarvanaTrainer
    from trainers.vit_trainer import ViTTrainer

    class Measured(ViTTrainer if task == "cls" else SegOnCarvanaTrainer):
        def build_datasets(self):
            if data is None:
                splits = super().build_datasets()
                splits.pop("test")  # nothing to score: test() then reloads no checkpoint
                return splits
            from data.classification import ClassificationData

            (images, targets), n = data, self.args.batch_size
            if task == "cls":
                pool = [(images[i], int(targets[i])) for i in range(len(images))]
                self.data = ClassificationData(None, None, None, 10, tuple(images.shape[1:]), list("0123456789"))
                val = pool[:n]
            else:
                pool = [{"image": images[i], "mask": targets[i]} for i in range(len(images))]
                self.data = SimpleNamespace(input_size=tuple(images.shape[-2:]))  # what the seg model card reads
                val = [{**item, "full_mask": item["mask"][0].to(torch.uint8)} for item in pool[:n]]
            # A list is a dataset. One epoch of exactly the run's steps: the validation at its end is not timed.
            return {"train": (pool * self.args.max_steps)[: self.args.max_steps * n], "val": val}

        def build_hooks(self):
            self.timer = Timer(warmup, warmup + steps, profile)
            return [self.timer]

    return Measured


def bare_rate(task, argv, warmup, steps, data, profile=None):
    """Images/s of a hand-written training step on one batch of ``data`` on the device (see the module docstring);
    ``profile``: a :class:`Profile` of the timed steps."""
    trainer = measured(task, warmup, steps, data).from_argv(argv)
    trainer.build_datasets()  # what build_model reads (ViTTrainer: the images' shape, the classes)
    a, device = trainer.args, trainer.device
    model = trainer.build_model().to(device, memory_format=torch.channels_last)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = not a.deterministic  # as TrainerBase.build sets it
    if a.compile:
        model.compile()  # as --compile does: in place, the loss outside
    loss_fn = trainer.build_loss()
    # fused: PyTorch's fastest AdamW (one kernel per step), the ceiling whichever one the trainer picks
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay, fused=True)
    # the model's input as the trainer's InputStage makes it from the uint8 batch, once: the ceiling pays no copy
    x = InputStage(device, a.mean, a.std, channels_last=True).to_device(data[0][: a.batch_size])
    y = data[1][: a.batch_size].to(device)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
            if profile:
                profile.start()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.amp):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    seconds = time.perf_counter() - start
    torch.backends.cudnn.benchmark = benchmark
    if profile:
        profile.stop()
    return steps * a.batch_size / seconds


def trainer_rate(task, argv, warmup, steps, data=None, profile=None):
    """Images/s of the task's trainer (``fit``) over steps ``warmup + 1 .. warmup + steps``."""
    trainer = measured(task, warmup, steps, data, profile).from_argv(argv)
    trainer.fit()
    shutil.rmtree(trainer.run_dir, ignore_errors=True)  # ViT-B's checkpoints hold a GB each
    return steps * trainer.args.batch_size / (trainer.timer.end - trainer.timer.start)


def write_jpeg(job):
    """Write ``job = (path, seed, width, height)``: a smooth random colour field plus noise (about 100 KB at
    500x375, as an ImageNet JPEG), sides scaled by 0.9-1.1, one in five portrait."""
    from PIL import Image

    path, seed, width, height = job
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.9, 1.1)
    width, height = sorted((round(width * scale), round(height * scale)), reverse=rng.random() >= 0.2)
    field = Image.fromarray(rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8))
    pixels = np.asarray(field.resize((width, height), Image.BICUBIC), dtype=np.int16)
    pixels = np.clip(pixels + rng.normal(0, 16, pixels.shape).astype(np.int16), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def jpeg_folder(root, count, distinct, width, height):
    """Fill ``root`` with ``count`` JPEGs in 10 class folders: ``distinct`` random files, the rest hard links."""
    paths = [os.path.join(root, f"class{i % 10}", f"{i:06d}.jpg") for i in range(count)]
    for folder in {os.path.dirname(p) for p in paths}:
        os.makedirs(folder)
    jobs = [(paths[i], i, width, height) for i in range(min(count, distinct))]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:  # the children use no CUDA
        pool.map(write_jpeg, jobs, chunksize=8)
    for i in range(len(jobs), count):
        os.link(paths[i % len(jobs)], paths[i])


def row_argv(name, a, tmp):
    """``(task, trainer flags, batch, (H, W))`` of the row ``name``; runs go under ``tmp``."""
    task, model, compiled, batch = ROWS[name]
    batch, model = a.batch_size or (4 if a.tiny else batch), TINY_MODELS[model] if a.tiny else model
    flags = [
        "--output_dir",
        os.path.join(tmp, "runs"),
        "--max_steps",
        str(a.warmup + a.steps),
        "--model_type",
        model,
        "--batch_size",
        str(batch),
        "--amp",
        str(a.amp),
        "--amp_dtype",
        "bfloat16",
        "--channels_last",
        "true",
        "--compile",
        str(compiled),
        "--gpu_devices",
        a.gpu_devices,
        "--warmup_steps",
        "0",
        "--grad_clip",
        "0",
    ]
    if task == "seg":
        size = (64, 96) if a.tiny else (320, 480)
        # The images are tensors in memory (see measured); the config's layout check wants Carvana's folders.
        folder = os.path.join(tmp, "carvana")
        for sub in ("train", "train_masks"):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
        return (
            task,
            flags
            + [
                "--base_channels",
                "4" if a.tiny else "16",
                "--image_size",
                *map(str, size),
                "--data_dir",
                folder,
                "--num_viz",
                "0",
            ],
            batch,
            size,
        )
    return (
        task,
        flags + ["--patch_size", "8" if a.tiny else "16", "--image_size", str(a.image_size)],
        batch,
        (a.image_size, a.image_size),
    )


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    p.add_argument("--batch_size", type=int, default=0, help="for every row (0: 128 resnet50, 64 ViT, 8 UNet)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 50; --tiny 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before them, >= 1 (default 10; --tiny 1)")
    p.add_argument("--image_size", type=int, default=None, help="classifiers' side (default 224; --tiny 32)")
    p.add_argument(
        "--num_workers",
        type=workers_type,
        default="auto",
        help="(c)'s DataLoader workers: auto (the trainer's default) or N",
    )
    p.add_argument(
        "--memory_workers",
        type=workers_type,
        default="auto",
        help="(b)'s DataLoader workers: auto (the trainer's default) or N (0: collation and pinning on "
        "the main thread)",
    )
    p.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="write torch.profiler tables of (a)'s and (b)'s timed steps to DIR/<model>_{bare,trainer}.txt "
        "(their rates then include the profiler's cost)",
    )
    p.add_argument("--gpu_devices", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--compile_backend", default=None, help="torch.compile backend (default inductor; --tiny eager)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke mode: tiny models, data and step counts")
    p.add_argument("--output_json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    if not set(a.models.split(",")) <= set(ROWS):
        p.error(f"--models {a.models}: choose from {', '.join(ROWS)}")
    for flag, full, tiny in (
        ("steps", 50, 3),
        ("warmup", 10, 1),
        ("image_size", 224, 32),
        ("compile_backend", "inductor", "eager"),
    ):
        setattr(a, flag, getattr(a, flag) if getattr(a, flag) is not None else tiny if a.tiny else full)
    if a.steps < 1 or a.warmup < 1:
        p.error("--steps and --warmup must be >= 1 (the timer starts at the end of a step)")
    return a


def main(argv=None):
    a = parse(argv)
    a.gpu_devices = a.gpu_devices or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = select_device(a.gpu_devices)
    except ConfigError as exc:
        print(f"bench/throughput.py: {exc}", file=sys.stderr)
        return 2
    if device.type != "cuda" and not a.tiny:
        print(
            f"bench/throughput.py: needs a CUDA GPU (device here: {device}), or --tiny for a CPU smoke run",
            file=sys.stderr,
        )
        return 2
    a.amp = device.type == "cuda"  # see the module docstring
    # what the trainer's auto gives (base.config.trainer_flags.resolve_workers): (c)'s step counts depend on it
    a.files_workers, a.memory_workers = (resolve_workers(v, device) for v in (a.num_workers, a.memory_workers))
    if a.compile_backend != "inductor":  # --compile calls nn.Module.compile (base/loop/step.py)
        torch.nn.Module.compile = functools.partialmethod(torch.nn.Module.compile, backend=a.compile_backend)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        specs = {name: row_argv(name, a, tmp) for name in a.models.split(",")}
        # (c): the DataLoader keeps 2 batches per worker in flight and its workers deliver in bursts: warm up
        # until that queue is drained and time enough steps that one burst is a small share of them.
        a.files_warmup, a.files_steps = max(a.warmup, 2 * a.files_workers), max(a.steps, 8 * a.files_workers)
        need = max(
            [b * (a.files_warmup + a.files_steps) for task, _, b, _ in specs.values() if task == "cls"], default=0
        )
        count = math.ceil(need / (1 - VAL_FRACTION)) + 2  # one epoch holds every step: no validation inside
        a.jpeg = dict(
            zip(
                ("count", "distinct", "width", "height"),
                (max(count, 40), 40, 100, 75) if a.tiny else (count, 2000, 500, 375),
            )
        )
        if need:
            jpeg_folder(os.path.join(tmp, "jpeg"), **a.jpeg)
        files = [
            "--data_type",
            "ImageFolder",
            "--data_dir",
            os.path.join(tmp, "jpeg"),
            "--randaugment",
            "2",
            "9",
            "--hflip",
            "0.5",
            "--num_workers",
            str(a.files_workers),
            "--val_fraction",
            str(VAL_FRACTION),
            "--test_fraction",
            "0",
            "--max_steps",
            str(a.files_warmup + a.files_steps),
        ]
        if a.profile:
            os.makedirs(a.profile, exist_ok=True)
        for name, (task, argv, batch, hw) in specs.items():
            data = synthetic(task, batch, hw)
            profiles = [
                Profile(os.path.join(a.profile, f"{name}_{k}.txt")) if a.profile else None for k in ("bare", "trainer")
            ]
            memory = argv + ["--num_workers", str(a.memory_workers)]
            rates = [
                bare_rate(task, argv, a.warmup, a.steps, data, profiles[0]),
                trainer_rate(task, memory, a.warmup, a.steps, data, profiles[1]),
                trainer_rate(task, argv + files, a.files_warmup, a.files_steps) if task == "cls" else None,
            ]
            shown = [None if r is None else round(r, 1) for r in rates]  # ratios are of these printed figures
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "input": f"{hw[0]}x{hw[1]}",
                    "bare": shown[0],
                    "trainer": shown[1],
                    "files": shown[2],
                    "trainer/bare": round(shown[1] / shown[0], 3),
                    "files/bare": None if shown[2] is None else round(shown[2] / shown[0], 3),
                }
            )
            print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
            del data  # before the next row: free the device's memory
            gc.collect()
            if ROWS[name][2]:
                torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report(a, device, rows)
    return 0


def report(a, device, rows):
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    head = {
        "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
        "device": f"{name} ({device}), {os.cpu_count()} CPUs",
        "torch": torch.__version__,
    }
    print("\n".join(f"{k}: {v}" for k, v in head.items()))
    print(
        f"setup: bf16 autocast {'on' if a.amp else 'off'}, channels-last, compile backend {a.compile_backend}; "
        f"{a.steps} steps timed after {a.warmup}; (b): {a.memory_workers} workers"
        f"{' (profiled)' if a.profile else ''}; (c): {a.files_steps} after {a.files_warmup}, {a.jpeg['count']} "
        f"JPEGs ({a.jpeg['distinct']} distinct, about {a.jpeg['width']}x{a.jpeg['height']}), {a.files_workers} "
        f"workers" + ("; --tiny: resnet18, vit_ti_16 (patch 8), UNet width 4" if a.tiny else "") + "\n"
    )
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    print(
        "| model | batch | input | (a) bare, images/s | (b) trainer, in memory, images/s "
        "| (c) trainer, JPEG files, images/s | (b)/(a) | (c)/(a) |\n| --- | ---: | --- |" + " ---: |" * 5
    )
    for r in rows:
        print(
            f"| {r['model']} | {r['batch']} | {r['input']} | "
            + " | ".join(
                [fmt(r[k], ".1f") for k in ("bare", "trainer", "files")]
                + [fmt(r[k], ".3f") for k in ("trainer/bare", "files/bare")]
            )
            + " |"
        )
    short = [f"{r['model']} ({r['trainer/bare']:.3f})" for r in rows if r["trainer/bare"] < 0.97]
    print(f"\ntarget (b)/(a) >= 0.97 for every row: {'missed by ' + ', '.join(short) if short else 'met'}")
    for r in (r for r in rows if r["model"] == "resnet50"):
        print(f"target (c)/(a) >= 0.90 for resnet50: {'met' if r['files/bare'] >= 0.90 else 'missed'}")
    if a.output_json:
        with open(a.output_json, "w", encoding="utf-8") as f:
            json.dump({**head, "args": vars(a), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
