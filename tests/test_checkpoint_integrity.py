"""Data at risk: a corrupted checkpoint, a save on a full disk, a rewrite cut short, stale temp files.

Every checkpoint carries a checksum of its content that loading verifies; step
checkpoints are pruned only once the new one verifies; the run folder's JSON
and CSV are rewritten atomically; temporary files of dead writers are removed.
"""

import builtins
import errno
import glob
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

import base.runtime.atomic_files
from base.checkpoint.files import load_checkpoint, save_checkpoint, verify_checkpoint
from base.checkpoint.resume import newest_checkpoint, newest_verified_checkpoint
from base.errors import CheckpointError
from base.run.folder import record_resume, remove_stale_temp_files, write_config
from base.run.row_files import MetricsCSV
from conftest import ToyTrainer
from evaluators.vanilla_evaluator import VanillaEvaluator
from test_bad_input import error_line, run_main
from test_fault_files import kill_9_once_marked
from trainers.vanilla_trainer import VanillaTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENOSPC = "No space left on device"


def flip_weight_byte(path):
    """Flip one byte inside the raw data of the largest tensor of ``state["model"]`` in the file.

    A checkpoint stores each tensor's bytes uncompressed, so they can be found in the file.
    """
    state = torch.load(path, weights_only=True)
    tensor = max(state["model"].values(), key=torch.Tensor.numel)
    needle = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    data = bytearray(pathlib.Path(path).read_bytes())
    assert data.count(needle) == 1, "the tensor's bytes are not unique in the file"
    at = data.find(needle) + len(needle) // 2
    data[at] ^= 0xFF
    pathlib.Path(path).write_bytes(data)


def weights(dtype, seed=0):
    return {"w": torch.randn(64, generator=torch.Generator().manual_seed(seed)).to(dtype), "b": torch.zeros(2)}


# ------------------------------------------------------------------ checksums
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_flipped_weight_byte_is_refused(tmp_path, dtype):
    path = str(tmp_path / "Toy_last_ckpt.pth")
    save_checkpoint({"model": weights(dtype), "global_step": 3, "rng": {"python": (3, (1, 2), None)}}, path)
    assert verify_checkpoint(path) is None
    flip_weight_byte(path)
    with pytest.raises(CheckpointError, match="checksum") as info:
        load_checkpoint(path)
    assert path in str(info.value) and len(str(info.value).splitlines()) == 1
    reason = verify_checkpoint(path)
    assert reason is not None and path in reason and "checksum" in reason


@pytest.mark.parametrize("change", [lambda w: w.view(torch.int32), lambda w: w.reshape(8, 8)], ids=["dtype", "shape"])
def test_a_tensor_read_as_another_dtype_or_shape_is_refused(tmp_path, change):
    """The same bytes under another dtype or shape are other numbers: the checksum covers both."""
    path = str(tmp_path / "Toy_last_ckpt.pth")
    save_checkpoint({"model": weights(torch.float32), "global_step": 3}, path)
    stamped = torch.load(path, weights_only=True)  # the checksum as saved, kept below
    w = stamped["model"]["w"]
    stamped["model"]["w"] = changed = change(w)
    assert changed.dtype != w.dtype or changed.shape != w.shape
    assert changed.numpy().tobytes() == w.numpy().tobytes()
    torch.save(stamped, path)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_a_renamed_key_is_refused(tmp_path):
    """A key is part of the content: the same tensor under another name (e.g. one flipped byte of it) fails."""
    path = str(tmp_path / "Toy_last_ckpt.pth")
    save_checkpoint({"model": weights(torch.float32), "global_step": 3}, path)
    stamped = torch.load(path, weights_only=True)
    stamped["model"]["x"] = stamped["model"].pop("w")  # sorts where "w" did: only the name differs
    torch.save(stamped, path)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_an_intact_checkpoint_round_trips(tmp_path):
    path = str(tmp_path / "ckpt.pth")
    state = {
        "model": weights(torch.bfloat16),
        "step": 0,
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "optimizer": {"state": {0: {"m": torch.ones(2)}}, "lr": float("nan")},
        "metrics": {"b": 1.0, "a": None, "flag": True},
        "config": json.dumps({"x": "ü"}),
    }
    save_checkpoint(state, path)
    assert "checksum" in torch.load(path, weights_only=True)  # one file, checksum inside
    assert "checksum" not in state  # the caller's dict is left alone
    assert verify_checkpoint(path) is None
    loaded = load_checkpoint(path)
    assert sorted(loaded) == sorted(state) and torch.equal(loaded["model"]["w"], state["model"]["w"])


def test_a_checkpoint_without_checksum_still_loads(tmp_path):
    path = str(tmp_path / "old.pth")
    torch.save({"model": weights(torch.float32)}, path)  # as written before checksums existed
    assert verify_checkpoint(path) is None


def test_a_missing_file_does_not_verify(tmp_path):
    path = str(tmp_path / "nothing.pth")
    assert path in verify_checkpoint(path)


@pytest.fixture(scope="module")
def vanilla_best(tmp_path_factory):
    """The best checkpoint of a tiny real Digits run."""
    trainer = VanillaTrainer.from_argv(
        [
            "--epochs",
            "1",
            "--train_val_sample_rate",
            "0.2",
            "--gpu_devices",
            "cpu",
            "--output_dir",
            str(tmp_path_factory.mktemp("vanilla")),
        ]
    )
    trainer.fit()
    return trainer.checkpointer.path("best")


def test_evaluator_refuses_a_corrupted_checkpoint_in_one_line(vanilla_best, tmp_path, capsys):
    path = str(tmp_path / "Vanilla_best_ckpt.pth")
    pathlib.Path(path).write_bytes(pathlib.Path(vanilla_best).read_bytes())
    flip_weight_byte(path)
    status, err = run_main(VanillaEvaluator, ["--model_path", path], capsys)
    assert status == 1, err
    line = error_line(status, err)
    assert path in line and "checksum" in line


# ------------------------------------------------------------------ fallback and keep_last_k
def step_checkpoints(folder, steps):
    """``Toy_step<N>_ckpt.pth`` for each N, written one second apart (the newest last)."""
    paths = []
    for i, step in enumerate(steps):
        path = os.path.join(folder, f"Toy_step{step}_ckpt.pth")
        save_checkpoint({"model": weights(torch.float32, seed=step), "global_step": step}, path)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
        paths.append(path)
    return paths


def test_newest_verified_skips_a_corrupted_newest(tmp_path):
    old, older_ok, newest = step_checkpoints(str(tmp_path), [1, 2, 3])
    flip_weight_byte(newest)
    os.utime(newest, (1_000_002, 1_000_002))
    assert newest_checkpoint(str(tmp_path)) == newest  # unchanged: no reading
    path, skipped = newest_verified_checkpoint(str(tmp_path))
    assert path == older_ok
    assert [p for p, _ in skipped] == [newest] and "checksum" in skipped[0][1]
    flip_weight_byte(older_ok)
    flip_weight_byte(old)
    path, skipped = newest_verified_checkpoint(str(tmp_path))
    assert path is None and {p for p, _ in skipped} == {old, older_ok, newest}
    assert newest_verified_checkpoint(str(tmp_path / "empty")) == (None, [])


def test_keep_last_k_keeps_older_steps_when_the_new_one_is_corrupt(toy_argv, tmp_path, monkeypatch, capsys):
    real_atomic_write = base.runtime.atomic_files.atomic_write

    def corrupt_step4(path, write_fn):
        real_atomic_write(path, write_fn)
        if path.endswith("_step4_ckpt.pth"):
            flip_weight_byte(path)  # as if the disk returned other bytes than were written

    monkeypatch.setattr(base.runtime.atomic_files, "atomic_write", corrupt_step4)
    argv = toy_argv + ["--epochs", "1", "--save_every_steps", "1", "--keep_last_k", "2"]
    status, err = run_main(ToyTrainer, argv, capsys)
    (run,) = glob.glob(str(tmp_path / "Toy" / "*"))
    step = {n: os.path.join(run, f"Toy_step{n}_ckpt.pth") for n in range(1, 6)}
    assert status == 1, err
    line = error_line(status, err)
    assert step[4] in line and "checksum" in line
    assert [n for n in step if os.path.exists(step[n])] == [2, 3, 4]  # step1 went when step3 verified
    assert verify_checkpoint(step[2]) is None and verify_checkpoint(step[3]) is None


# ------------------------------------------------------------------ atomic rewrites
class FailingFile:
    """A writable file that takes ``budget`` characters, then fails like a full disk."""

    def __init__(self, f, budget):
        self._f, self._budget = f, budget

    def write(self, data):
        if len(data) > self._budget:
            self._f.write(data[: self._budget])
            self._f.flush()
            self._budget = 0
            raise OSError(errno.ENOSPC, ENOSPC)
        self._budget -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def disk_fills_up(monkeypatch, budget, should_fail):
    """Make files opened for writing whose path passes ``should_fail(path)`` fail after ``budget`` characters."""
    real_open = builtins.open

    def failing_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax") and isinstance(file, str) and should_fail(file):
            return FailingFile(f, budget)
        return f

    monkeypatch.setattr(builtins, "open", failing_open)


def config_file(folder):
    path = os.path.join(folder, "config.json")
    write_config(path, ToyTrainer.from_argv(["--gpu_devices", "cpu"]).args, {"lr": "default"})
    return path


def metrics_file(folder):
    csv_file = MetricsCSV(os.path.join(folder, "metrics.csv"))
    for step in (5, 10, 15):
        csv_file.write({"epoch": step // 5, "step": step, "val_loss": 1.0 / step})
    return csv_file.path


REWRITES = {
    "write_config": (
        config_file,
        lambda path: write_config(
            path, ToyTrainer.from_argv(["--gpu_devices", "cpu", "--lr", "0.5"]).args, {"lr": "command line"}
        ),
    ),
    "record_resume": (
        config_file,
        lambda path: record_resume(path, ToyTrainer.from_argv(["--gpu_devices", "cpu"]).args, {}, "Toy_last_ckpt.pth"),
    ),
    "metrics_resume": (metrics_file, lambda path: MetricsCSV(path).resume(1, 5)),
}


@pytest.mark.parametrize("name", sorted(REWRITES))
def test_a_rewrite_cut_short_keeps_the_old_file(tmp_path, monkeypatch, name):
    make, rewrite = REWRITES[name]
    path = make(str(tmp_path))
    before = pathlib.Path(path).read_bytes()
    disk_fills_up(monkeypatch, 20, lambda file: file.startswith(str(tmp_path)))
    with pytest.raises(OSError, match="No space left"):
        rewrite(path)
    monkeypatch.undo()
    assert pathlib.Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temporary file left
    rewrite(path)  # and with room on the disk the rewrite happens
    assert pathlib.Path(path).read_bytes() != before


# ------------------------------------------------------------------ stale temporary files
def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "dead": f".Toy_last_ckpt.pth.tmp{dead.pid}",
        "mine": f".metrics.csv.tmp{os.getpid()}",
        "parent": f".config.json.tmp{os.getppid()}",
        "checkpoint": "Toy_last_ckpt.pth",
        "hidden": ".keep",
        "unlikely": f".x.tmp{2**70}",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "summary").mkdir()
    (tmp_path / "summary" / names["dead"]).write_bytes(b"x")  # subfolders are not this function's
    removed = remove_stale_temp_files(str(tmp_path))
    assert sorted(removed) == sorted(str(tmp_path / names[k]) for k in ("dead", "unlikely"))
    assert sorted(os.listdir(tmp_path)) == sorted(
        [names[k] for k in ("mine", "parent", "checkpoint", "hidden")] + ["summary"]
    )
    assert os.listdir(tmp_path / "summary") == [names["dead"]]


# ------------------------------------------------------------------ a full disk
OLD = {"model": {"w": torch.arange(4.0)}, "global_step": 1}


@pytest.mark.parametrize("budget", [10, 2000])  # 2000: torch.save reports it as a RuntimeError
def test_a_full_disk_is_one_checkpoint_error_and_keeps_the_old_file(tmp_path, monkeypatch, budget):
    path = str(tmp_path / "Toy_last_ckpt.pth")
    save_checkpoint(OLD, path)
    disk_fills_up(monkeypatch, budget, lambda file: ".tmp" in file)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint({"model": {"w": torch.zeros(100_000)}, "global_step": 2}, path)
    monkeypatch.undo()
    message = str(info.value)
    assert path in message and ENOSPC in message and "intact" in message
    assert len(message.splitlines()) == 1
    assert load_checkpoint(path)["global_step"] == 1 and verify_checkpoint(path) is None
    assert os.listdir(tmp_path) == ["Toy_last_ckpt.pth"]


def test_a_full_disk_during_training_ends_in_one_line(toy_argv, tmp_path, monkeypatch, capsys):
    """The disk fills up after the first ``last`` checkpoint: the next checkpoint save fails,
    then the exception checkpoint fails too; the user sees the first failure in one line."""
    failed = []

    def full_after_first_last(file):
        name = os.path.basename(file)
        if not (name.startswith(".Toy_") and "_ckpt.pth.tmp" in name):
            return False
        if not glob.glob(str(tmp_path / "Toy" / "*" / "Toy_last_ckpt.pth")):
            return False
        failed.append(os.path.join(os.path.dirname(file), name[1 : name.rindex(".tmp")]))
        return True

    disk_fills_up(monkeypatch, 2000, full_after_first_last)
    status, err = run_main(ToyTrainer, toy_argv, capsys)
    monkeypatch.undo()
    assert status == 1, err
    line = error_line(status, err)
    assert [line.count(": error: "), err.count(": error: ")] == [1, 1]
    assert failed[0] in line and ENOSPC in line and "exception_ckpt" not in line
    assert failed[-1].endswith("Toy_exception_ckpt.pth") and "exception checkpoint could not be written" in err
    (run,) = glob.glob(str(tmp_path / "Toy" / "*"))
    last = os.path.join(run, "Toy_last_ckpt.pth")
    assert load_checkpoint(last)["global_step"] == 5 and verify_checkpoint(last) is None
    assert not os.path.exists(os.path.join(run, "Toy_exception_ckpt.pth"))
    assert not [f for f in os.listdir(run) if ".tmp" in f]


def test_a_full_disk_during_the_best_export_ends_in_one_line(toy_argv, tmp_path, monkeypatch, capsys):
    disk_fills_up(monkeypatch, 10, lambda file: os.path.basename(file).startswith(".Toy_best.safetensors.tmp"))
    status, err = run_main(ToyTrainer, toy_argv, capsys)
    monkeypatch.undo()
    line = error_line(status, err)
    assert status == 1 and "Toy_best.safetensors" in line and ENOSPC in line
    (run,) = glob.glob(str(tmp_path / "Toy" / "*"))
    assert verify_checkpoint(os.path.join(run, "Toy_best_ckpt.pth")) is None


@pytest.mark.parametrize("name", ["record_resume", "metrics_resume"])
def test_kill_9_inside_a_rewrite_keeps_the_old_file(tmp_path, name):
    """A real process killed with SIGKILL half-way through rewriting the config or metrics.csv."""
    path = REWRITES[name][0](str(tmp_path))
    before = open(path, "rb").read()
    marker = tmp_path / "half_written"
    call = (
        "record_resume(path, argparse.Namespace(lr=0.5), {}, 'Toy_last_ckpt.pth')"
        if name == "record_resume"
        else "MetricsCSV(path).resume(1, 5)"
    )
    script = textwrap.dedent(f"""
        import argparse, sys, time
        sys.path.insert(0, {ROOT!r})
        import base.run.row_files, base.run.folder
        from base.run.row_files import MetricsCSV
        from base.run.folder import record_resume
        real = base.run.folder.atomic_write

        def slow(target, write_fn):
            def half(f):
                f.write(b"x" * 10)
                f.flush()
                open({str(marker)!r}, "w").close()
                time.sleep(60)
            real(target, half)

        base.run.folder.atomic_write = base.run.row_files.atomic_write = slow
        path = {path!r}
        {call}
    """)
    kill_9_once_marked(script, marker)
    assert open(path, "rb").read() == before
    assert remove_stale_temp_files(str(tmp_path)) and not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_a_save_into_a_deleted_run_folder_says_the_folder_is_gone(tmp_path):
    from base.checkpoint.files import save_checkpoint
    from base.errors import CheckpointError

    folder = tmp_path / "run"
    folder.mkdir()
    folder.rmdir()
    with pytest.raises(CheckpointError, match=f"the run folder {folder} is gone"):
        save_checkpoint({"model": {}}, str(folder / "x_last_ckpt.pth"))
