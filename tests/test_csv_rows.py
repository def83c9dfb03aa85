"""The rows of ``metrics.csv`` and ``scalars.csv`` after a resume match the checkpoint it starts from.

Each validation and each logged scalar is in the files once, whichever checkpoint a resume
picks (``last``, a step checkpoint, an older one when newer ones are corrupt) and wherever the
previous launch stopped (kill -9 between a validation's row and ``last``). A file cut short or
emptied is repaired or reported in one line, never appended to as it is.
"""

import csv
import glob
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from base.run.folder import RunDirError
from base.run.row_files import MetricsCSV
from conftest import ToyTrainer
from test_resume import StopAfter, logged

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 40 samples in batches of 8: 5 steps an epoch, a validation at steps 5 and 10.
FLAGS = [
    "--gpu_devices",
    "cpu",
    "--deterministic",
    "--epochs",
    "2",
    "--log_every_steps",
    "1",
    "--loggers",
    "csv",
    "--save_every_steps",
    "5",
]


def fit(out, *extra, hooks=()):
    trainer = ToyTrainer.from_argv(["--output_dir", str(out), *FLAGS, *extra])
    trainer.build_hooks = lambda: list(hooks)
    trainer.fit()
    return trainer


def resume(out):
    trainer = ToyTrainer.from_argv(["--output_dir", str(out), "--resume", "auto"])
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run's rows (timings left out)."""
    return logged(fit(tmp_path_factory.mktemp("straight")))


def the_run(out):
    (run,) = glob.glob(os.path.join(str(out), "Toy", "*"))
    return run


def run_log(run):
    (path,) = glob.glob(os.path.join(run, "*_log.txt"))
    return pathlib.Path(path).read_text(encoding="utf-8")


# ------------------------------------------------------------------ a validation's row and the checkpoint
def test_kill_9_between_a_validations_row_and_last_then_resume_logs_each_row_once(tmp_path, straight):
    """A real process killed right after the step-5 validation wrote its rows (and `best`), before `last`:
    the resume starts from the step-5 checkpoint, saved before that validation, and does it again."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = [{ROOT!r}, {os.path.join(ROOT, "tests")!r}]
        from base.checkpoint.trainer_state import CheckpointEvents
        from conftest import ToyTrainer

        real_save = CheckpointEvents.save

        def save(self, tag, *args, **kwargs):
            if tag == "last" and self.global_step == 5:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(self, tag, *args, **kwargs)

        CheckpointEvents.save = save
        ToyTrainer.from_argv(sys.argv[1:]).fit()
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script, "--output_dir", str(tmp_path), *FLAGS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    run = the_run(tmp_path)
    assert not os.path.exists(os.path.join(run, "Toy_last_ckpt.pth"))
    with open(os.path.join(run, "metrics.csv"), newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["5"]  # the row was written before the kill
    resumed = resume(tmp_path)
    assert "Toy_step5_ckpt.pth" in resumed.resume_from[1]
    assert logged(resumed) == straight


@pytest.mark.parametrize("corrupt", [["last"], ["last", "step10"]], ids=["to_step10", "to_step5"])
def test_resume_from_an_older_checkpoint_when_newer_ones_are_corrupt_drops_the_rows_after_it(
    tmp_path, straight, corrupt
):
    """The finished run's newest checkpoints fail their checksum: the resume falls back to a step checkpoint,
    saved before the validation at its step, and every row written after it is redone once."""
    fit(tmp_path)
    run = the_run(tmp_path)
    for tag in corrupt:  # a new file in place of the old one (`last` may share its bytes with `best`)
        path = os.path.join(run, f"Toy_{tag}_ckpt.pth")
        data = bytearray(pathlib.Path(path).read_bytes())
        data[len(data) // 2] ^= 0xFF
        with open(path + ".new", "wb") as f:
            f.write(data)
        os.replace(path + ".new", path)
    resumed = resume(tmp_path)
    assert resumed.resume_from[1].endswith("Toy_step10_ckpt.pth" if len(corrupt) == 1 else "Toy_step5_ckpt.pth")
    assert logged(resumed) == straight


# ------------------------------------------------------------------ files cut short, emptied, replaced
def stopped(out):
    """A run stopped by an exception after step 7: its checkpoint there covers the step-5 validation's row."""
    with pytest.raises(RuntimeError, match="stop after step 7"):
        fit(out, hooks=[StopAfter(7)])
    return the_run(out)


def warnings_about(run, name):
    return [line for line in run_log(run).splitlines() if " WARNING " in line and name in line]


def test_a_metrics_csv_cut_inside_its_last_row_is_repaired_not_appended_to(tmp_path, straight):
    run = stopped(tmp_path)
    path = os.path.join(run, "metrics.csv")
    data = pathlib.Path(path).read_bytes()
    with open(path, "wb") as f:
        f.write(data[:-9])  # the step-5 row loses its end and its newline
    resumed = resume(tmp_path)
    assert logged(resumed) == (straight[0][1:], straight[1])  # the cut row is gone, the next one whole
    cut, lost = warnings_about(run, "metrics.csv")
    assert "dropped its last line '1,5," in cut and "cut short" in cut
    assert "holds 0 of the 1 rows the checkpoint covers" in lost and "1 are lost" in lost


def test_a_scalars_csv_cut_short_is_repaired_and_the_lost_rows_said(tmp_path, straight):
    run = stopped(tmp_path)
    path = os.path.join(run, "scalars.csv")
    data = pathlib.Path(path).read_bytes()
    with open(path, "wb") as f:  # the end of step 7's rows is lost, in the middle of its grad_norm value
        f.write(data[: data.rindex(b"7,train/grad_norm,") + len(b"7,train/grad_norm,1")])
    resumed = resume(tmp_path)
    assert logged(resumed) == (straight[0], [r for r in straight[1] if r[:2] != ["7", "train/grad_norm"]])
    cut, lost = warnings_about(run, "scalars.csv")
    # lost: step 7's grad_norm and the rows after it (images_per_sec, step_time, data_time)
    assert "dropped its last line '7,train/grad_norm,1'" in cut and "4 are lost" in lost


def test_an_emptied_metrics_csv_is_said_in_one_line(tmp_path, straight):
    run = stopped(tmp_path)
    open(os.path.join(run, "metrics.csv"), "w").close()
    resumed = resume(tmp_path)
    assert logged(resumed)[0] == straight[0][1:]
    (line,) = warnings_about(run, "metrics.csv")
    assert "holds 0 of the 1 rows the checkpoint covers (emptied or cut short?)" in line


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("metrics.csv", "header", "{path}: its first line '1,5,"),
        ("scalars.csv", "header", "{path}: its first line"),
        ("metrics.csv", "binary", "{path} is not CSV text ('utf-8' codec can't decode"),
    ],
    ids=["metrics", "scalars", "binary"],
)
def test_a_row_file_that_is_not_a_table_is_refused_in_one_line_and_kept(tmp_path, capsys, name, damage, message):
    from test_bad_input import error_line, run_main

    run = stopped(tmp_path)
    path = os.path.join(run, name)
    data = pathlib.Path(path).read_bytes()
    bad = data[data.index(b"\n") + 1 :] if damage == "header" else b"\xff\xfe" + data
    pathlib.Path(path).write_bytes(bad)
    capsys.readouterr()
    status, err = run_main(ToyTrainer, ["--output_dir", str(tmp_path), "--resume", "auto"], capsys)
    line = error_line(status, err)
    assert status == 1 and message.format(path=path) in line and "move it away" in line
    assert pathlib.Path(path).read_bytes() == bad  # nothing lost


def test_scalars_csv_replaced_by_a_folder_is_one_error_line_without_tracker_warnings(tmp_path, capsys, monkeypatch):
    from test_bad_input import error_line, run_main

    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # a file store under --output_dir
    run = stopped(tmp_path)
    os.remove(os.path.join(run, "scalars.csv"))
    os.mkdir(os.path.join(run, "scalars.csv"))
    capsys.readouterr()
    # mlflow after csv: it never starts, so it has nothing to finish and nothing to warn about
    status, err = run_main(
        ToyTrainer, ["--output_dir", str(tmp_path), "--resume", "auto", "--loggers", "csv,mlflow"], capsys
    )
    line = error_line(status, err)
    assert status == 1 and line.endswith(f"{os.path.join(run, 'scalars.csv')}: Is a directory")
    assert [w for w in err.splitlines() if " WARNING " in w and "hook StopAfter" not in w] == []


def test_a_checkpoint_that_does_not_count_rows_keeps_the_validations_its_state_has_taken_in(tmp_path, straight):
    """Checkpoints written before rows were counted: metrics.csv keeps the rows up to the checkpoint's
    last validation (validated_at), not up to its step: the step-5 checkpoint was saved before step 5's."""
    from base.checkpoint.files import load_checkpoint, save_checkpoint

    fit(tmp_path)
    run = the_run(tmp_path)
    for tag in ("last", "step10"):
        os.remove(os.path.join(run, f"Toy_{tag}_ckpt.pth"))
    path = os.path.join(run, "Toy_step5_ckpt.pth")
    state = load_checkpoint(path)
    assert state.pop("metrics_rows") == 0 and "csv" in state.pop("loggers")  # step 5's row came after it
    save_checkpoint(state, path)
    resumed = resume(tmp_path)
    assert logged(resumed)[0] == straight[0]


def test_a_first_row_that_failed_to_write_gets_its_header_with_the_next_row(tmp_path):
    path = tmp_path / "gone" / "metrics.csv"
    rows = MetricsCSV(str(path))
    with pytest.raises(RunDirError):  # the folder is missing: nothing was written
        rows.write({"step": 1, "val_loss": 0.5})
    path.parent.mkdir()
    rows.write({"step": 2, "val_loss": 0.25})
    assert open(path, newline="").read() == "step,val_loss\r\n2,0.25\r\n" and rows.rows == 1
