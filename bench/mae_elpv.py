"""Does MAE pretraining help on ELPV? Scratch fine-tune vs MAE-pretrained fine-tune vs linear probe, timed.

    python bench/mae_elpv.py --gpu_devices 0 --amp                          # vit_ti_16 at 64x64, patch 8
    python bench/mae_elpv.py --gpu_devices cpu --image_size 32 --pretrain_epochs 30 --finetune_epochs 10
    python bench/mae_elpv.py --tiny --gpu_devices cpu                       # smoke run of the script itself

One process runs, in order: ``trainer_mae.py`` on the ELPV training split (labels unused, k-NN
monitor on the 4-class labels), then for each ``--tasks`` (binary, 4class) three ``trainer_vit.py``
runs with the same model, data, epochs and augmentation: from scratch; from the MAE checkpoint
with ``--layer_decay``; and a linear probe of the MAE encoder (``--linear_probe``, SGD). The ELPV
test split (25%, stratified by defect probability and cell type) is the same for every run and
never seen in pretraining. Prints each run's equivalent command, test top-1 of its best checkpoint
and wall time (seconds from building the trainer to the end of its test; imports excluded, the MAE
row includes reading the ELPV cells once), then one markdown table.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainers.mae_trainer import MAETrainer  # noqa: E402
from trainers.vit_trainer import ViTTrainer  # noqa: E402


def fit(cls, argv):
    """Train ``cls`` with ``argv``; returns ``(test metrics, wall seconds, run folder)``."""
    start = time.perf_counter()
    trainer = cls.from_argv(argv)
    metrics = trainer.fit()
    return metrics, time.perf_counter() - start, trainer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_type", default="vit_ti_16")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--patch_size", type=int, default=8)
    p.add_argument("--pretrain_epochs", type=int, default=200)
    p.add_argument("--finetune_epochs", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--layer_decay", type=float, default=0.75)
    p.add_argument("--tasks", default="binary,4class")
    p.add_argument("--gpu_devices", default=None)
    p.add_argument("--amp", default="false")
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--output_dir", default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--tiny", action="store_true", help="16x16 images, a tenth of the data, 1+1 epochs")
    a = p.parse_args(argv)
    if a.tiny:
        a.image_size, a.pretrain_epochs, a.finetune_epochs, a.batch_size = 16, 1, 1, 32
    out = a.output_dir or tempfile.mkdtemp(prefix="mae_elpv_")
    common = [
        "--data_type",
        "ELPV",
        "--model_type",
        a.model_type,
        "--image_size",
        str(a.image_size),
        "--patch_size",
        str(a.patch_size),
        "--batch_size",
        str(a.batch_size),
        "--amp",
        a.amp,
        "--num_workers",
        str(a.num_workers),
        "--output_dir",
        out,
        "--hflip",
        "0.5",
        "--vflip",
        "0.5",
    ]
    common += ["--gpu_devices", a.gpu_devices] if a.gpu_devices else []
    common += ["--train_val_sample_rate", "0.1", "--test_sample_rate", "0.1"] if a.tiny else []
    val_every = str(max(1, a.pretrain_epochs // 10))
    pretrain = [
        "--epochs",
        str(a.pretrain_epochs),
        "--val_every_epochs",
        val_every,
        "--elpv_task",
        "4class",
        "--warmup_steps",
        str(max(1, a.pretrain_epochs * 1770 // a.batch_size // 20)),
    ]
    _, seconds, mae = fit(MAETrainer, [*common, *pretrain])
    checkpoint = mae.checkpointer.path("best")
    rows = [
        (
            "pretrain",
            "MAE (4class k-NN monitor)",
            mae.early_stopper.best,
            seconds,
            "trainer_mae.py " + " ".join([*common, *pretrain]),
        )
    ]
    print(f"MAE: best val k-NN top-1 {mae.early_stopper.best:.2f} in {seconds:.0f} s; {checkpoint}", flush=True)
    finetune = [
        "--epochs",
        str(a.finetune_epochs),
        "--warmup_steps",
        str(max(1, a.finetune_epochs * 1770 // a.batch_size // 10)),
    ]
    recipes = {
        "scratch": [],
        "MAE fine-tune": ["--pretrained_path", checkpoint, "--layer_decay", str(a.layer_decay)],
        "MAE linear probe": [
            "--pretrained_path",
            checkpoint,
            "--linear_probe",
            "--optimizer",
            "sgd",
            "--lr",
            "0.1",
            "--weight_decay",
            "0",
            "--label_smoothing",
            "0",
            "--grad_clip",
            "0",
        ],
    }
    for task in a.tasks.split(","):
        for name, extra in recipes.items():
            run = [*common, *finetune, "--elpv_task", task, *extra]
            metrics, seconds, trainer = fit(ViTTrainer, run)
            rows.append((task, name, metrics["top1"], seconds, "trainer_vit.py " + " ".join(run)))
            print(f"{task} {name}: test top-1 {metrics['top1']:.2f} in {seconds:.0f} s", flush=True)
    print()
    for task, name, _top1, _seconds, command in rows:
        print(f"- {task} / {name}: `python {command}`")
    print("\n| task | run | test top-1 (%) | wall time (s) |\n| --- | --- | ---: | ---: |")
    for task, name, top1, seconds, _ in rows:
        label = "val k-NN top-1 (%)" if task == "pretrain" else "test top-1"
        print(f"| {task} | {name} | {top1:.2f}{'' if task != 'pretrain' else ' (' + label + ')'} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
