"""ELPV over seeds: one recipe's test top-1 as mean +- std over several runs, overall and per cell type.

    python bench/elpv.py --recipes scratch64 --seeds 0,1,2 --gpu_devices cpu       # the CPU table (~25 min)
    python bench/elpv.py --recipes scratch224 --seeds 0,1,2 --gpu_devices 0        # GPU: --data_on_device, AMP
    python bench/elpv.py --recipes pretrained --seeds 0,1,2 --gpu_devices 0        # needs the weights in the cache
    python bench/elpv.py --tiny --gpu_devices cpu                                  # smoke run of the script itself

A single ELPV run's test top-1 carries a standard error of about 1.7 points (656 test cells), so a
difference of 2-3 points between two recipes is no finding until it holds over seeds. For each recipe
and each ``--seeds`` entry this runs ``trainer_vit.py`` in this process, then ``eval_vit.py`` on the
best checkpoint, and reports test top-1 and its mono / poly split (``per_group_top1``) as mean +- sample
std (n - 1) over the seeds. A seed draws the weights' initialisation, the augmentation and dropout, and
the stratified 25% test split itself (``data.elpv.stratified_test_split``), as repeated random splits do:
the spread covers all three.

Recipes (binary task, ``resnet18`` unless said; flips, RandAugment 2 9, EMA, AdamW with warmup):

* ``scratch64`` / ``scratch128`` / ``scratch224``: from random weights at 64, 128 or 224 px;
* ``mae64``: a ViT-Ti/8 at 64 px fine-tuned from a masked autoencoder pretrained on the training split
  (``trainer_mae.py``, per seed; labels unused);
* ``pretrained``: ``timm/resnet18.a1_in1k`` from its ImageNet weights (``--pretrained``) at 224 px; it
  needs the weights in the local Hugging Face cache and is skipped with a line saying so when they are not.

On a CUDA device every run adds ``--data_on_device --amp --channels_last``; on the CPU ``--num_workers 1``.
Prints one markdown row per recipe: runs, test top-1 / mono / poly (mean +- std, %), minutes per run, the
command of seed 0.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COMMON = ["--elpv_task", "binary", "--data_type", "ELPV", "--hflip", "0.5", "--vflip", "0.5"]
COMMON += ["--randaugment", "2", "9", "--batch_size", "64", "--warmup_steps", "100"]

#: recipe -> (trainer_vit.py flags, MAE pretraining flags or None)
RECIPES = {
    "scratch64": (["--model_type", "resnet18", "--image_size", "64", "--epochs", "20", "--lr", "2e-3"], None),
    "scratch128": (["--model_type", "resnet18", "--image_size", "128", "--epochs", "40", "--lr", "2e-3"], None),
    "scratch224": (
        ["--model_type", "resnet18", "--image_size", "224", "--epochs", "60", "--lr", "2e-3", "--ema_decay", "0.999"],
        None,
    ),
    "mae64": (
        ["--model_type", "vit_ti_16", "--patch_size", "8", "--image_size", "64", "--epochs", "50"]
        + ["--lr", "1e-3", "--layer_decay", "0.75"],
        ["--model_type", "vit_ti_16", "--patch_size", "8", "--image_size", "64", "--epochs", "200"],
    ),
    "pretrained": (
        ["--model_type", "timm/resnet18.a1_in1k", "--pretrained", "true", "--epochs", "15", "--freeze_epochs", "1"],
        None,
    ),
}


def mean_std(values):
    """``"m +- s"`` of ``values`` (%, two decimals; ``s`` the sample std, ``n/a`` for one value)."""
    mean = statistics.mean(values)
    std = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "n/a"
    return f"{mean:.2f} +- {std}"


def pretrained_weights_cached():
    """Whether ``timm/resnet18.a1_in1k``'s weights are in the local Hugging Face cache (no network asked)."""
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache("timm/resnet18.a1_in1k", name), str)
        for name in ("model.safetensors", "pytorch_model.bin")
    )


def run_one(recipe, seed, out, device, tiny):
    """Train and evaluate one seed of ``recipe`` in ``out``; returns ``(results dict, seconds, argv)``.

    Raises:
        whatever the trainer or evaluator raises (a bad flag, missing data).
    """
    from evaluators.vit_evaluator import ViTEvaluator
    from trainers.mae_trainer import MAETrainer
    from trainers.vit_trainer import ViTTrainer

    flags, mae_flags = RECIPES[recipe]
    base = [*COMMON, "--seed", str(seed), "--gpu_devices", device, "--output_dir", out]
    if device != "cpu":
        base += ["--data_on_device", "true", "--amp", "true", "--channels_last", "true"]
    else:  # one worker augments the next batch while the main process trains: both cores busy
        base += ["--num_workers", "1"]
    if tiny:  # the script's own smoke run: tiny images, a few steps
        flags = [*flags, "--max_steps", "2", "--image_size", "16", "--patch_size", "4", "--batch_size", "16"]
        flags = [f for f in flags if f not in ("--pretrained", "true")] if recipe == "pretrained" else flags
    start = time.perf_counter()
    argv = [*base, *flags, "--proj_name", f"elpv_{recipe}_{seed}"]
    if mae_flags is not None:
        mae_argv = [*base, *mae_flags, "--proj_name", f"elpv_{recipe}_mae_{seed}"]
        mae_argv = [*mae_argv, "--max_steps", "2", "--image_size", "16", "--patch_size", "4"] if tiny else mae_argv
        mae = MAETrainer.from_argv([*mae_argv, "--elpv_task", "4class"])  # the k-NN monitor's labels (last wins)
        mae.fit()
        argv += ["--pretrained_path", mae.checkpointer.path("best")]
    trainer = ViTTrainer.from_argv(argv)
    trainer.fit()
    evaluator = ViTEvaluator.from_argv(["--model_path", trainer.checkpointer.path("best"), "--gpu_devices", device])
    results = evaluator.run()
    return results, time.perf_counter() - start, argv


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipes", default="scratch64", help=f"comma list of {', '.join(RECIPES)}")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds (3 at least for a std worth reading)")
    p.add_argument("--gpu_devices", default="cpu")
    p.add_argument("--output_dir", default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--tiny", action="store_true", help="16x16 images, 2 steps per run: the script's smoke run")
    a = p.parse_args(argv)
    recipes = a.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        p.error(f"--recipes: unknown {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {a.seeds!r}: a comma list of integers")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        out = a.output_dir or scratch
        for recipe in recipes:
            if recipe == "pretrained" and not a.tiny and not pretrained_weights_cached():
                rows.append(
                    f"| {recipe} | 0 | not run: the weights of timm/resnet18.a1_in1k are not in the Hugging Face "
                    f"cache; on a machine with a network: `python bench/elpv.py --recipes pretrained` | | | | |"
                )
                continue
            top1, mono, poly, seconds, first = [], [], [], [], None
            for seed in seeds:
                results, wall, run_argv = run_one(recipe, seed, out, a.gpu_devices, a.tiny)
                first = first or run_argv
                top1.append(results["top1"])
                groups = results.get("per_group_top1") or {}
                mono.append(groups.get("mono", float("nan")))
                poly.append(groups.get("poly", float("nan")))
                seconds.append(wall)
                print(f"{recipe} seed {seed}: test top-1 {results['top1']:.2f} ({wall / 60:.1f} min)", flush=True)
            command = "python trainer_vit.py " + " ".join("Results" if x == out else x for x in first)
            rows.append(
                f"| {recipe} | {len(seeds)} | {mean_std(top1)} | {mean_std(mono)} | {mean_std(poly)} | "
                f"{statistics.mean(seconds) / 60:.1f} | `{command}` |"
            )
    print("| recipe | seeds | test top-1 % | mono % | poly % | minutes per run | command (seed 0) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
