"""DDP on CPU: 2 processes with gloo, started by torchrun or spawned as ranks with torchrun's variables.

One run folder and one writer; the same weights as one process on the same
global batch; validation over the whole split exactly once per sample; a signal
to one rank stops both with a checkpoint, and resuming continues bit-identically;
a DDP checkpoint evaluates in one process. The model of ``dist_toy.py`` has no
BatchNorm and no dropout.
"""

import csv
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from base.checkpoint.files import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "tests", "dist_toy.py")
# 47 samples: windows of 2 batches of 3 per process; the last has 6 samples on rank 0 and 5 on rank 1
DDP_FLAGS = ["--batch_size", "3", "--accum_steps", "2", "--gpu_devices", "cpu", "--deterministic"]
ONE_PROCESS_FLAGS = ["--batch_size", "12", "--gpu_devices", "cpu", "--deterministic"]  # the same global batch


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(argv, script=TOY, nproc=2, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def spawn(argv, world=2, script=TOY):
    """Start ``world`` ranks as torchrun would (its environment variables), each a Popen we can signal."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, script, *argv],
                cwd=ROOT,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def finish(procs, timeout=180):
    """``[(exit status, output)]`` once every rank has ended (a hung rank fails the test, and is killed)."""
    try:
        return [(p.wait(timeout=timeout), p.stdout.read()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def run_folders(out):
    return sorted(d for d in glob.glob(os.path.join(out, "DistToy", "*")) if os.path.isdir(d))


def ckpt(run, tag="last"):
    return load_checkpoint(glob.glob(os.path.join(run, f"*_{tag}_ckpt.pth"))[0])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 2-process run (torchrun) and a 1-process run of the same global batch."""
    ddp_out, one_out = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("one")
    count = ddp_out / "allreduces"
    ddp = torchrun(["--output_dir", str(ddp_out), *DDP_FLAGS, "--count_allreduce", str(count)])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, TOY, "--output_dir", str(one_out), *ONE_PROCESS_FLAGS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    return {
        "ddp_out": str(ddp_out),
        "ddp": run_folders(ddp_out),
        "one": run_folders(one_out),
        "count": str(count),
        "ddp_log": ddp.stderr,
    }


def test_rank_zero_alone_writes_one_run_folder(runs):
    assert len(runs["ddp"]) == 1
    run = runs["ddp"][0]
    names = sorted(os.listdir(run))
    assert len([n for n in names if n.startswith("config_")]) == 1
    assert len([n for n in names if n.endswith("_log.txt")]) == 1 and not any(n.startswith("rank") for n in names)
    assert {"DistToy_last_ckpt.pth", "DistToy_best_ckpt.pth", "metrics.csv", "test_metrics.json"} <= set(names)
    # One process writes TensorBoard events (its scalars, then the HParams record): one pid in the names.
    events = os.listdir(os.path.join(run, "summary"))
    assert events and len({name.rsplit(".", 2)[1] for name in events}) == 1
    with open(os.path.join(run, "metrics.csv")) as f:
        assert len(f.read().strip().splitlines()) == 1 + 3  # header + one row per epoch, not per process
    config = json.load(open(glob.glob(os.path.join(run, "config_*.json"))[0]))
    assert config["meta"]["world_size"] == 2
    assert "global batch 12 = 3 per process x 2 processes x 2 accumulation steps" in runs["ddp_log"]


def test_ddp_weights_equal_one_process_on_the_same_global_batch(runs):
    ddp, one = ckpt(runs["ddp"][0]), ckpt(runs["one"][0])
    assert ddp["global_step"] == one["global_step"] == 12  # 4 windows an epoch (the last one of 11 samples)
    assert ddp["model"].keys() == one["model"].keys()  # the unwrapped model's names, no "module." prefix
    for key in one["model"]:
        torch.testing.assert_close(ddp["model"][key], one["model"][key], rtol=0, atol=1e-6)
    assert ddp["loss_count"] == one["loss_count"]  # the training loss counts every process's samples
    assert ddp["loss_sum"] == pytest.approx(one["loss_sum"], rel=1e-6)


def test_accumulation_all_reduces_once_per_optimizer_step(runs):
    for rank in (0, 1):
        allreduces, steps = map(int, open(f"{runs['count']}.rank{rank}").read().split())
        assert (allreduces, steps) == (12, 12)  # no_sync on the first batch of each window


def test_validation_counts_every_sample_once_and_matches_one_process(runs, tmp_path):
    """The one-process run, resumed by 2 processes when finished, tests its best checkpoint on 13 samples
    split 7/6 over the ranks in batches of 4: the same top-1 exactly."""
    import shutil

    run = shutil.copytree(runs["one"][0], tmp_path / "one_run")
    single = json.load(open(os.path.join(run, "test_metrics.json")))
    done = torchrun(["--resume", str(run), "--output_dir", str(tmp_path), *ONE_PROCESS_FLAGS])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nothing left to train" in done.stderr
    sharded = json.load(open(os.path.join(run, "test_metrics.json")))
    assert sharded["samples"] == single["samples"] == 13
    assert sharded["top1"] == single["top1"]
    # float32 batch means over other batches (strided shards): equal to rounding
    assert sharded["loss"] == pytest.approx(single["loss"], rel=1e-6)


def test_sigterm_to_one_rank_stops_both_and_resume_is_identical(tmp_path):
    """Inputs get noise from each process's own RNG stream, which a resume must continue for every rank."""
    flags = ["--output_dir", str(tmp_path), *DDP_FLAGS, "--noise", "0.3"]
    straight = finish(spawn([*flags, "--proj_name", "Straight"]))
    assert [rc for rc, _ in straight] == [0, 0], straight
    procs = spawn([*flags, "--step_sleep", "0.2"])
    deadline = time.time() + 120
    while time.time() < deadline:  # the first validation (after step 4) is in rank 0's log
        logs = glob.glob(os.path.join(tmp_path, "DistToy", "*", "*_log.txt"))
        if logs and "epoch 1 step 4" in open(logs[0]).read():
            break
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)
    results = finish(procs)
    assert [rc for rc, _ in results] == [143, 143], results
    (run,) = run_folders(tmp_path)
    stopped = ckpt(run, "preempt")
    assert 4 <= stopped["global_step"] < 12 and len(stopped["loss_sums"]) == 2  # each process's loss sums
    import shutil

    other = shutil.copytree(run, tmp_path / "Other" / os.path.basename(run))
    resumed = finish(spawn(["--resume", run, *flags]))
    assert [rc for rc, _ in resumed] == [0, 0], resumed
    # with one process instead of two: the rest of the epoch is shared out again, and the run finishes
    alone = subprocess.run(
        [sys.executable, TOY, "--resume", str(other), *flags], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "written by 2 process(es), this run has 1" in alone.stderr
    finished = ckpt(str(other))
    assert finished["global_step"] > stopped["global_step"] and finished["epoch"] == 3
    (reference,) = glob.glob(os.path.join(tmp_path, "Straight", "*"))
    straight, after = ckpt(reference), ckpt(run)
    for key in straight["model"]:
        assert torch.equal(after["model"][key], straight["model"][key]), key
    for a, b in zip(after["optimizer"]["state"].values(), straight["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [open(os.path.join(r, "metrics.csv")).read().splitlines() for r in (run, reference)]
    assert [r.rsplit(",", 1)[0] for r in rows[0]] == [r.rsplit(",", 1)[0] for r in rows[1]]  # but val_seconds


def test_a_rank_dies_and_the_exception_checkpoint_of_the_other_resumes_without_mixing_loss_sums(runs, tmp_path):
    """Rank 1 exits in step 7; rank 0, alone, writes the exception checkpoint of step 6, which holds only its
    own training-loss sums of steps 5-6. ``--resume auto`` takes it with both processes again: the weights go
    on as in the uninterrupted run, and the train_loss of the validation at step 8 averages every process's
    samples of steps 7-8, never rank 0's share of steps 5-6 with them."""
    flags = ["--output_dir", str(tmp_path), *DDP_FLAGS]
    crashed = finish(spawn([*flags, "--die_at_step", "7"]))
    assert [rc for rc, _ in crashed] == [1, 3], crashed  # rank 0 fails on its lost peer
    (run,) = run_folders(tmp_path)
    state = ckpt(run, "exception")
    assert (state["global_step"], state["world_size"]) == (6, 2)
    assert state["loss_sums"][1] is None and state["loss_sum"] is None  # said to be one process's, not a total
    resumed = finish(spawn(["--resume", "auto", *flags, "--die_at_step", "0"]))
    assert [rc for rc, _ in resumed] == [0, 0], resumed
    assert "continuing from DistToy_exception_ckpt.pth" in resumed[0][1]
    assert not glob.glob(os.path.join(run, "*_exception_ckpt.pth"))  # superseded by the resumed run's saves
    reference = runs["ddp"][0]
    for key, value in ckpt(reference)["model"].items():
        torch.testing.assert_close(ckpt(run)["model"][key], value, rtol=0, atol=1e-6)

    def read(name):
        with open(os.path.join(reference, name)) as ref, open(os.path.join(run, name)) as got:
            return list(csv.DictReader(ref)), list(csv.DictReader(got))

    scalars, _ = read("scalars.csv")
    since_val = {int(r["step"]): float(r["value"]) for r in scalars if r["name"] == "train/loss"}
    # train/loss is the mean since the validation at step 4: steps 5-6 hold 24 samples, steps 5-8 all 47
    steps_7_8 = (since_val[8] * 47 - since_val[6] * 24) / 23
    want, got = read("metrics.csv")
    assert [r["step"] for r in got] == [r["step"] for r in want] == ["4", "8", "12"]
    assert float(got[1]["train_loss"]) == pytest.approx(steps_7_8, rel=1e-5)
    assert float(got[1]["train_loss"]) != pytest.approx(float(want[1]["train_loss"]), rel=1e-3)
    for row, other in zip(got, want):
        assert float(row["val_top1"]) == float(other["val_top1"])
        assert float(row["val_loss"]) == pytest.approx(float(other["val_loss"]), rel=1e-5)
    assert float(got[2]["train_loss"]) == pytest.approx(float(want[2]["train_loss"]), rel=1e-5)
    assert "one process's training-loss sums only, which are dropped" in resumed[0][1]


def test_nonfinite_loss_on_one_rank_stops_every_rank(tmp_path):
    results = finish(spawn(["--output_dir", str(tmp_path), *DDP_FLAGS, "--nan_at_step", "3"]), timeout=120)
    assert [rc for rc, _ in results] == [1, 1], results
    assert all("non-finite loss" in out and "step 3" in out for _, out in results)
    skipped = finish(
        spawn(
            ["--output_dir", str(tmp_path), *DDP_FLAGS, "--nan_at_step", "3", "--nonfinite", "skip", "--epochs", "1"]
        ),
        timeout=120,
    )
    assert [rc for rc, _ in skipped] == [0, 0], skipped
    run = run_folders(tmp_path)[-1]
    assert ckpt(run)["skipped_steps"] == 1 and ckpt(run)["global_step"] == 3  # 4 windows, one skipped


def test_gpu_devices_list_starts_ddp_and_the_checkpoint_evaluates_in_one_process(tmp_path):
    """``--gpu_devices cpu,cpu`` runs torchrun itself; eval_vanilla.py then scores the DDP run's best checkpoint
    on the test split alone, exactly as the run's own (sharded) test did."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = subprocess.run(
        [
            sys.executable,
            "trainer_vanilla.py",
            "--gpu_devices",
            "cpu,cpu",
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "6",
            "--batch_size",
            "16",
            "--val_every_steps",
            "3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    (run,) = glob.glob(os.path.join(tmp_path, "Vanilla", "*"))
    config = json.load(open(glob.glob(os.path.join(run, "config_*.json"))[0]))
    assert config["meta"]["world_size"] == 2 and config["config"]["gpu_devices"] == "cpu,cpu"
    best = os.path.join(run, "Vanilla_best_ckpt.pth")
    evaluated = subprocess.run(
        [sys.executable, "eval_vanilla.py", "--model_path", best, "--gpu_devices", "cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (result,) = glob.glob(os.path.join(run, "Vanilla_best_ckpt_eval_*.json"))
    assert json.load(open(result))["top1"] == json.load(open(os.path.join(run, "test_metrics.json")))["top1"]


def multilabel_layout(tmp_path_factory):
    from multilabel_data import make_multilabel_csv

    return str(make_multilabel_csv(tmp_path_factory.getbasetemp() / "multilabel_csv")[0])


def carvana_layout(tmp_path_factory):
    from data.make_synthetic_carvana import generate

    root = tmp_path_factory.getbasetemp() / "ddp_carvana"
    if not root.exists():
        generate(str(root), cars=8, views=2, width=96, height=64, seed=5)
    return str(root)


def shapes_layout(tmp_path_factory):
    from data.make_synthetic_shapes import generate

    root = tmp_path_factory.getbasetemp() / "ddp_shapes"
    if not root.exists():
        generate(str(root), images=24, width=48, height=32, classes=3, seed=1)
    return str(root)


#: The generated data a task reads (``--data_dir``), by task.
TASK_DATA = {"seg": carvana_layout, "seg_multiclass": shapes_layout, "multilabel": multilabel_layout}

TASKS = {  # entry script, evaluator, flags, the metric compared
    "vit": (
        "trainer_vit.py",
        "eval_vit.py",
        [
            "--image_size",
            "16",
            "--patch_size",
            "8",
            "--train_val_sample_rate",
            "0.05",
            "--test_sample_rate",
            "0.05",
            "--mixup_alpha",
            "0.2",
            "--randaugment",
            "2",
            "9",
            "--ema_decay",
            "0.9",
        ],
        "top1",
    ),
    # validation and test gather both processes' scores: mAP needs every one
    "multilabel": (
        "trainer_vanilla.py",
        "eval_vanilla.py",
        [
            *("--data_type", "ImageCSV", "--image_size", "16", "--model_type", "SmallCNN", "--batch_size", "16"),
            *(
                "--train_val_sample_rate",
                "0.5",
            ),
        ],
        "map",
    ),
    "seg": (
        "trainer_seg_on_carvana.py",
        "eval_seg_on_carvana.py",
        ["--base_channels", "4", "--batch_size", "2"],
        "loss",
    ),
    # the confusion matrix summed over both processes: the evaluator's mIoU in one process is the run's
    "seg_multiclass": (
        "trainer_seg.py",
        "eval_seg.py",
        ["--num_classes", "3", "--base_channels", "4", "--batch_size", "2", "--img_scale", "1"],
        "miou",
    ),
    # the k-NN bank gathered from both processes; its top-1 needs no random mask, so one process matches
    "mae": (
        "trainer_mae.py",
        "eval_mae.py",
        [
            "--data_type",
            "Digits",
            "--patch_size",
            "4",
            "--batch_size",
            "64",
            "--train_val_sample_rate",
            "0.3",
            "--knn_k",
            "5",
        ],
        "knn_top1",
    ),
}


def evaluator_class(script):
    """The evaluator class the root script ``script`` (``eval_*.py``) runs."""
    from evaluators.mae_evaluator import MAEEvaluator
    from evaluators.seg_evaluator import SegEvaluator
    from evaluators.seg_on_carvana_evaluator import SegOnCarvanaEvaluator
    from evaluators.vanilla_evaluator import VanillaEvaluator
    from evaluators.vit_evaluator import ViTEvaluator

    classes = (MAEEvaluator, SegEvaluator, SegOnCarvanaEvaluator, VanillaEvaluator, ViTEvaluator)
    return {cls.PROG: cls for cls in classes}[script]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_trainer_runs_under_ddp_and_its_checkpoint_evaluates_alone(task, tmp_path, tmp_path_factory):
    """Task code unchanged: 2 processes train and test; the evaluator scores the best checkpoint in one
    process as the run's own test did over 2 shards."""
    script, evaluator, flags, metric = TASKS[task]
    data = ["--data_dir", TASK_DATA[task](tmp_path_factory)] if task in TASK_DATA else []
    done = torchrun(
        [*data, "--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--epochs", "1", *flags], script=script
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = [d for d in glob.glob(os.path.join(tmp_path, "*", "*")) if os.path.isdir(d)]
    (best,) = glob.glob(os.path.join(run, "*_best_ckpt.pth"))
    evaluator_class(evaluator).from_argv(["--model_path", best, "--gpu_devices", "cpu", *data]).run()  # 1 process
    (result,) = glob.glob(os.path.join(run, "*_best_ckpt_eval_*.json"))
    own = json.load(open(os.path.join(run, "test_metrics.json")))
    assert json.load(open(result))[metric] == pytest.approx(own[metric], rel=1e-5)
