"""utils.cv: every fold in one study folder, continued after kill -9, summarised as mean ± std of the runs' files."""

import csv
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest

from utils.study import Launcher, mean_std

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--data_type", "Digits", "--model_type", "Vanilla", "--batch_size", "32", "--train_val_sample_rate", "0.3"]


def cv_command(out, *extra):
    return [sys.executable, "-m", "utils.cv", "trainer_vanilla.py", "--folds", "3", *TINY, "--output_dir", str(out),
            "--proj_name", "digits", *extra]  # fmt: skip


def run_dirs(out):
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(out, "digits", "cv_*", "*", "config_*.json")))


def config_of(run_dir):
    with open(glob.glob(os.path.join(run_dir, "config_*.json"))[0]) as f:
        return json.load(f)["config"]


def status_of(run_dir):
    with open(os.path.join(run_dir, "status.json")) as f:
        return json.load(f)


def test_cv_continues_after_kill_9_without_redoing_finished_folds_and_sums_up_every_run(tmp_path):
    command = cv_command(tmp_path, "--epochs", "3", "--seeds", "0,1")
    command[command.index("--folds") + 1] = "2"  # runs in order: fold 0 and 1 of seed 0, then of seed 1
    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:  # kill the whole group, launcher and trainer, once fold 1 of seed 0 has a checkpoint to resume from
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            runs = {(config_of(d)["fold"], config_of(d)["seed"]): d for d in run_dirs(tmp_path)}
            if (1, 0) in runs and glob.glob(os.path.join(runs[1, 0], "*_last_ckpt.pth")):
                break
            time.sleep(0.05)
        else:
            pytest.fail("fold 1 wrote no checkpoint before the launcher ended")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = {(config_of(d)["fold"], config_of(d)["seed"]): d for d in run_dirs(tmp_path)}
    assert set(first) == {(0, 0), (1, 0)} and status_of(first[0, 0])["status"] == "finished"
    assert status_of(first[1, 0])["status"] == "running"  # killed: no chance to say otherwise
    with open(os.path.join(first[0, 0], "metrics.csv")) as f:
        fold0_rows = f.read()
    fold0_mtime = os.path.getmtime(os.path.join(first[0, 0], "status.json"))

    again = subprocess.run([*command, "--parallel", "2"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "continuing study" in again.stdout and "fold 0 seed 0: finished already, kept" in again.stdout
    runs = {(config_of(d)["fold"], config_of(d)["seed"]): d for d in run_dirs(tmp_path)}
    assert sorted(runs) == [(0, 0), (0, 1), (1, 0), (1, 1)] and len(run_dirs(tmp_path)) == 4
    assert runs[0, 0] == first[0, 0] and runs[1, 0] == first[1, 0]
    with open(os.path.join(runs[0, 0], "metrics.csv")) as f:
        assert f.read() == fold0_rows  # fold 0 was not run again
    assert os.path.getmtime(os.path.join(runs[0, 0], "status.json")) == fold0_mtime
    assert status_of(runs[1, 0])["resumes"] == 1 and status_of(runs[0, 1])["resumes"] == 0  # resumed; new
    for (fold, seed), run in runs.items():
        assert status_of(run)["status"] == "finished" and status_of(run)["epoch"] == 3
        config = config_of(run)
        assert (config["folds"], config["fold"], config["seed"]) == (2, fold, seed)
    study = os.path.dirname(runs[0, 0])
    logs = sorted(os.listdir(os.path.join(study, "logs")))
    assert logs == ["fold0_seed1.log", "fold1_seed0.log", "fold1_seed1.log"]  # --parallel 2: a file each

    # The summary: mean and sample std of the runs' own files, computed by hand.
    with open(os.path.join(study, "cv_summary.json")) as f:
        summary = json.load(f)
    expected = hand_summary(list(runs.values()))
    assert summary["n"] == 4 and summary["monitor"] == "val_top1" and set(summary["mean"]) == set(expected)
    for name, (mean, std) in expected.items():
        assert summary["mean"][name] == pytest.approx(mean, rel=1e-12)
        assert summary["std"][name] == pytest.approx(std, rel=1e-12)
        assert f"{name}: {mean:.4f} ± {std:.4f}" in again.stdout
    with open(os.path.join(study, "cv_summary.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["fold"], r["seed"]) for r in rows] == [("0", "0"), ("1", "0"), ("0", "1"), ("1", "1"), ("mean", ""),
                                                      ("std", "")]  # fmt: skip
    assert float(rows[-1]["test_top1"]) == pytest.approx(expected["test_top1"][1])


def hand_summary(run_dirs_):
    """mean and sample std of the best val_top1 (from metrics.csv) and of each test metric (test_metrics.json)."""
    values = {}
    for run in run_dirs_:
        with open(os.path.join(run, "metrics.csv")) as f:
            values.setdefault("val_top1", []).append(max(float(r["val_top1"]) for r in csv.DictReader(f)))
        with open(os.path.join(run, "test_metrics.json")) as f:
            for k, v in json.load(f).items():
                if k not in ("checkpoint", "step"):
                    values.setdefault(f"test_{k}", []).append(v)
    return {k: (statistics.mean(v), statistics.stdev(v)) for k, v in values.items()}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seeds", "0,x"], "--seeds '0,x': expected a comma list of integers"),
        (["--fold", "1"], "--fold: python -m utils.cv sets it for each run"),
        (["--parallel", "0"], "--parallel 0: must be >= 1"),
        (["--lr", "-1"], "--lr"),
    ],
)
def test_bad_input_is_one_line_and_starts_nothing(tmp_path, extra, message):
    done = subprocess.run(cv_command(tmp_path, *extra), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "digits")  # no study folder


def test_mean_std_is_the_sample_std_and_says_when_there_is_none():
    assert mean_std([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3), pytest.approx(statistics.stdev([1, 2, 4])))
    assert mean_std([3.0]) == (3.0, None) and mean_std([]) == (None, None)


def test_submit_wraps_each_run_in_utils_submit_and_waits():
    launcher = Launcher("trainer_vit.py", parallel=4, log_dir="logs", submit="slurm",
                        submit_args="--partition gpu --time 60")  # fmt: skip
    assert launcher.command(["--fold", "1"]) == [
        sys.executable, "-m", "utils.submit", "--cluster", "slurm", "--wait", "--partition", "gpu", "--time", "60",
        "trainer_vit.py", "--fold", "1",
    ]  # fmt: skip


def test_ctrl_c_stops_the_running_fold_with_a_checkpoint_and_starts_no_other(tmp_path):
    command = [*cv_command(tmp_path, "--epochs", "40")]  # long enough to be inside training when the signal comes
    command[command.index("--folds") + 1] = "2"
    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if glob.glob(os.path.join(tmp_path, "digits", "cv_*", "*", "*_last_ckpt.pth")):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: the launcher and its run
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("cv: interrupted; run the same command again to continue")
    (run,) = run_dirs(tmp_path)  # fold 1 never started
    assert config_of(run)["fold"] == 0 and status_of(run)["status"] == "preempted"


@pytest.mark.parametrize("tool", ["utils.cv", "utils.sweep"])
def test_help_without_an_entry_script_prints_the_tools_flags(tool):
    done = subprocess.run([sys.executable, "-m", tool, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--parallel" in done.stdout and "--seeds" in done.stdout, done.stderr
