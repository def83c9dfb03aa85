"""status.json kept by the trainer, and ``python -m utils.runs`` reading it (SIGTERM and kill -9
runs are in test_preemption.py)."""

import csv
import io
import json
import os
import subprocess
import time

import pytest

from base.run.status import read_status
from conftest import ToyTrainer
from utils import runs


def table(capsys, *argv):
    """``utils.runs`` output as CSV rows (dicts), and its exit status."""
    status = runs.main([*argv, "--csv"])
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out))), status


@pytest.fixture
def two_runs(tmp_path):
    argv = ["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--epochs", "2"]
    finished = ToyTrainer.from_argv(argv)
    finished.fit()
    crashed = ToyTrainer.from_argv([*argv, "--fail_at_step", "8", "--lr", "0.01"])
    with pytest.raises(RuntimeError, match="boom"):
        crashed.fit()
    return tmp_path, finished, crashed


def test_status_file_of_a_finished_and_a_crashed_run(two_runs):
    _, finished, crashed = two_runs
    done = read_status(finished.run_dir)
    test = json.load(open(os.path.join(finished.run_dir, "test_metrics.json")))
    assert done["status"] == "finished" and done["resumes"] == 0 and done["error"] is None
    assert (done["epoch"], done["global_step"], done["planned_epochs"], done["planned_steps"]) == (2, 10, 2, 10)
    assert done["best"] == finished.early_stopper.best and done["monitor"] == "val_loss"
    assert done["test"] == {"loss": test["loss"]} and done["trainer"] == "ToyTrainer" and done["model"] == "Toy"
    assert done["wall_seconds"] > 0
    failed = read_status(crashed.run_dir)
    assert failed["status"] == "crashed" and failed["error"] == "RuntimeError: boom"
    assert failed["global_step"] == 7 and failed["epoch"] == 1 and "test" not in failed


def test_table_shows_each_run_and_a_resume(two_runs, capsys):
    out, finished, crashed = two_runs
    rows, status = table(capsys, str(out))
    assert status == 0
    assert [(r["timestamp"], r["status"]) for r in rows] == [
        (finished.timestamp, "finished"),
        (crashed.timestamp, "crashed"),
    ]
    assert rows[0]["progress"] == "2/2 ep" and rows[1]["progress"] == "1/2 ep"
    assert rows[0]["best"] == f"val_loss {finished.early_stopper.best:.4g}"
    assert rows[0]["test"].startswith("loss ") and rows[1]["test"] == ""
    assert rows[0]["project"] == "Toy" and rows[0]["trainer"] == "ToyTrainer" and rows[0]["model"] == "Toy"
    wall = read_status(crashed.run_dir)["wall_seconds"]

    ToyTrainer.from_argv(["--resume", crashed.run_dir, "--fail_at_step", "0"]).fit()
    rows, _ = table(capsys, str(out), "--sort", "timestamp", "--desc")
    assert [(r["timestamp"], r["status"]) for r in rows] == [
        (crashed.timestamp, "finished, resumed 1x"),
        (finished.timestamp, "finished"),
    ]
    assert read_status(crashed.run_dir)["wall_seconds"] > wall  # both launches count
    assert table(capsys, str(out), "--proj", "Other")[0] == []


def test_diff_lists_only_the_keys_that_differ(two_runs, capsys):
    out, finished, crashed = two_runs
    rows, _ = table(capsys, str(out), "--diff")
    assert set(rows[0]) == {"project", "timestamp", "fail_at_step", "lr"}
    by_stamp = {r["timestamp"]: r for r in rows}
    assert by_stamp[crashed.timestamp]["lr"] == "0.01" and by_stamp[finished.timestamp]["fail_at_step"] == "0"


def test_a_run_that_says_running_but_whose_process_is_gone_is_killed(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert runs.status_text({"status": "running", "pid": gone.pid, "host": os.uname().nodename}) == "killed"
    assert runs.status_text({"status": "running", "pid": os.getpid(), "host": os.uname().nodename}) == "running"
    assert runs.status_text({"status": "preempted", "resumes": 2}) == "preempted, resumed 2x"
    assert runs.status_text({}) == "unknown"


def test_bad_folder_and_sort_key_exit_2_with_one_line(tmp_path, capsys):
    assert runs.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"runs: error: {tmp_path / 'missing'}: no such folder"
    assert runs.main([str(tmp_path), "--sort", "speed"]) == 2
    assert "--sort 'speed': choose one of project" in capsys.readouterr().err


def test_wall_time_of_the_earlier_launches_is_added_on_resume(two_runs):
    _, _, crashed = two_runs
    path = os.path.join(crashed.run_dir, "status.json")
    doc = read_status(crashed.run_dir)
    doc["wall_seconds"] = 1000.0  # far longer than any launch here: only a carried sum reaches it
    with open(path, "w") as f:
        json.dump(doc, f)
    start = time.monotonic()
    ToyTrainer.from_argv(["--resume", crashed.run_dir, "--fail_at_step", "0"]).fit()
    launch = time.monotonic() - start
    assert 1000.0 < read_status(crashed.run_dir)["wall_seconds"] <= 1000.0 + launch + 0.001  # (rounded to ms)


def test_a_corrupt_status_file_is_named_not_shown_as_unknown(two_runs, capsys):
    out, _, crashed = two_runs
    path = os.path.join(crashed.run_dir, "status.json")
    with open(path, "w") as f:
        f.write('{"status": "crash')  # cut short
    capsys.readouterr()
    assert runs.main([str(out), "--csv"]) == 0
    printed = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(printed.out)))
    assert {r["timestamp"]: r["status"] for r in rows}[crashed.timestamp] == "corrupt status.json"
    (line,) = printed.err.splitlines()
    assert line.startswith(f"runs: warning: {path} cannot be read (JSONDecodeError: ")
    # a resume says what it cannot carry over, and writes a whole file again
    ToyTrainer.from_argv(["--resume", crashed.run_dir, "--fail_at_step", "0"]).fit()
    (log,) = [name for name in os.listdir(crashed.run_dir) if name.endswith("_log.txt")]
    with open(os.path.join(crashed.run_dir, log)) as f:
        assert f"{path} cannot be read (JSONDecodeError: " in f.read()
    assert read_status(crashed.run_dir)["status"] == "finished"


def test_group_rows_give_mean_and_sample_std_per_study_and_per_seed_set(tmp_path, capsys):
    import statistics

    def fit(*flags):
        trainer = ToyTrainer.from_argv(["--output_dir", str(tmp_path), "--gpu_devices", "cpu", "--epochs", "1", *flags])
        trainer.fit()
        return read_status(trainer.run_dir)

    plain = [fit("--seed", str(s)) for s in (0, 1, 2)]
    fit("--seed", "0", "--lr", "0.01")  # another config: its own group
    study = [fit("--proj_name", "cv_2026", "--seed", str(s), "--lr", "0.02") for s in (5, 6)]
    fit("--proj_name", "sweep_2026", "--seed", "9")

    rows, status = table(capsys, str(tmp_path), "--group", "cv")
    assert status == 0 and [r["group"] for r in rows] == [f"{tmp_path.name}/cv_2026"]
    best = [s["best"] for s in study]
    assert rows[0]["runs"] == rows[0]["finished"] == "2" and rows[0]["monitor"] == "val_loss"
    assert rows[0]["best"] == f"{statistics.mean(best):.4f} ± {statistics.stdev(best):.4f}"
    test = [s["test"]["loss"] for s in study]
    assert rows[0]["test"] == f"{statistics.mean(test):.4f} ± {statistics.stdev(test):.4f}"

    rows, _ = table(capsys, str(tmp_path), "--group", "seed")
    by_size = sorted(((int(r["runs"]), r) for r in rows), key=lambda x: x[0])
    assert [n for n, _ in by_size] == [1, 1, 2, 3]  # lr 0.01; the sweep run; the cv study; seeds 0, 1, 2
    three = by_size[-1][1]
    assert three["group"].endswith("seeds 0,1,2")
    best = [s["best"] for s in plain]
    assert three["best"] == f"{statistics.mean(best):.4f} ± {statistics.stdev(best):.4f}"
    rows, _ = table(capsys, str(tmp_path), "--group", "sweep")
    assert len(rows) == 1 and rows[0]["runs"] == "1" and rows[0]["best"].endswith("± n/a")
