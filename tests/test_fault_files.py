"""Files that fight back: a checkpoint that runs code, a save cut short, broken images.

A checkpoint is read with ``weights_only=True`` and written atomically; an
unreadable image stops the run naming the file, or is skipped and listed.
"""

import glob
import io
import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from PIL import ImageFile

import base.checkpoint.files
from base.checkpoint.files import load_checkpoint, save_checkpoint
from base.checkpoint.resume import newest_checkpoint
from base.cli import main
from base.errors import CheckpointError
from data.classification import build_classification_datasets
from evaluators.vanilla_evaluator import VanillaEvaluator
from test_bad_input import error_line, run_main
from test_data import make_args, write_broken, write_png
from trainers.vanilla_trainer import VanillaTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ a checkpoint that runs code
class Evil:
    """Unpickling it would call ``target.touch()``: code run by merely loading a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


@pytest.fixture
def evil_checkpoint(tmp_path):
    """``(checkpoint path, target)``; loading it unsafely would create ``target``."""
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": Evil(target), "config": "{}"}, path)
    assert not target.exists()
    # The payload is real: an unrestricted load runs it.
    torch.load(path, weights_only=False)
    assert target.exists()
    target.unlink()
    return str(path), target


def test_load_checkpoint_refuses_code(evil_checkpoint):
    path, target = evil_checkpoint
    with pytest.raises(CheckpointError, match="refused") as info:
        load_checkpoint(path)
    assert path in str(info.value)
    assert not target.exists()


def test_eval_and_resume_refuse_code(evil_checkpoint, tmp_path, capsys):
    path, target = evil_checkpoint
    status, err = run_main(VanillaEvaluator, ["--model_path", path], capsys)
    assert status == 1 and path in error_line(status, err)
    status, err = run_main(
        VanillaTrainer, ["--resume", path, "--output_dir", str(tmp_path / "out"), "--gpu_devices", "cpu"], capsys
    )
    assert status == 1 and path in error_line(status, err)
    assert not target.exists()


# ------------------------------------------------------------------ safetensors export
def test_safetensors_export_evaluates_like_the_checkpoint(tmp_path, capsys):
    trainer = VanillaTrainer.from_argv(
        ["--epochs", "1", "--train_val_sample_rate", "0.2", "--gpu_devices", "cpu", "--output_dir", str(tmp_path)]
    )
    trainer.fit()
    exported = os.path.join(trainer.run_dir, "Vanilla_best.safetensors")
    assert os.path.isfile(exported) and os.path.isfile(os.path.join(trainer.run_dir, "Vanilla_best.json"))
    assert main(VanillaEvaluator, ["--model_path", exported]) == 0
    from_export = VanillaEvaluator.from_argv(["--model_path", exported]).run()
    from_ckpt = VanillaEvaluator.from_argv(["--model_path", trainer.checkpointer.path("best")]).run()
    assert from_export["num_samples"] == from_ckpt["num_samples"] == len(trainer.datasets["test"])
    assert from_export["top1"] == from_ckpt["top1"]
    assert from_export["confusion_matrix"] == from_ckpt["confusion_matrix"]
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------ a save cut short
OLD = {"model": {"w": torch.arange(4.0)}, "global_step": 1}


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "Vanilla_last_ckpt.pth")
    save_checkpoint(OLD, path)

    def half_then_fail(state, f):
        f.write(b"PK\x03\x04 half a zip archive")
        raise OSError("No space left on device")

    monkeypatch.setattr(base.checkpoint.files.torch, "save", half_then_fail)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint({"model": {"w": torch.zeros(4)}, "global_step": 2}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["global_step"] == 1 and torch.equal(state["model"]["w"], OLD["model"]["w"])
    assert os.listdir(tmp_path) == ["Vanilla_last_ckpt.pth"]  # no temporary file left


def kill_9_once_marked(script, marker):
    """Run ``script`` in a new Python process and SIGKILL it as soon as it creates ``marker``."""
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the writer exited before writing"
            assert time.monotonic() < deadline, "the writer never wrote"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_9_during_save_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "Vanilla_last_ckpt.pth"
    save_checkpoint(OLD, str(path))
    new = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(4)}, "global_step": 2}, new)
    (tmp_path / "new.bin").write_bytes(new.getvalue())
    marker = tmp_path / "half_written"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from base.runtime.atomic_files import atomic_write
        data = open({str(tmp_path / "new.bin")!r}, "rb").read()

        def write_half(f):
            f.write(data[: len(data) // 2])
            f.flush()
            open({str(marker)!r}, "w").close()
            time.sleep(60)

        atomic_write({str(path)!r}, write_half)
    """)
    kill_9_once_marked(script, marker)
    state = load_checkpoint(str(path))
    assert state["global_step"] == 1 and torch.equal(state["model"]["w"], OLD["model"]["w"])
    # The half-written temporary file may remain, but nothing takes it for a checkpoint.
    assert newest_checkpoint(str(tmp_path)) == str(path)


# ------------------------------------------------------------------ broken images
BAD = {"zero-byte": "empty.png", "text": "notes.png", "truncated": "cut.jpg"}


def image_folder(root, kind):
    """``root/train/{a,b}`` with 12 16x16 PNGs each plus one broken file in ``train/b``;
    ``root/test/{a,b}`` with 3 PNGs each. Returns the broken file's path."""
    for cls, value in (("a", 20), ("b", 230)):
        for i in range(12):
            write_png(str(root / "train" / cls / f"{i:02d}.png"), size=(16, 16), value=value + i)
        for i in range(3):
            write_png(str(root / "test" / cls / f"{i:02d}.png"), size=(16, 16), value=value + i)
    bad = root / "train" / "b" / BAD[kind]
    write_broken(str(bad), kind)
    return str(bad)


def split_seed(data_flags, bad, split):
    """A ``--seed`` whose train/val split puts ``bad`` in ``split``: splits are seeded
    permutations, so pick a seed rather than rely on one."""
    for seed in range(100):
        subset = getattr(build_classification_datasets(make_args(data_flags + ["--seed", str(seed)])), split)
        if any(subset.dataset.samples[i][0] == bad for i in subset.indices):
            return seed
    raise AssertionError(f"no seed puts {bad} in the {split} split")


def argv_for(root, bad, workers, *extra, split="train"):
    """Flags for a one-epoch run on ``root`` with the broken file ``bad`` in ``split``."""
    data = ["--data_type", "ImageFolder", "--data_dir", str(root), "--val_fraction", "0.2", "--test_fraction", "0.2"]
    seed = split_seed(data, bad, split) if split != "test" else 0
    return data + [
        "--seed",
        str(seed),
        "--image_size",
        "8",
        "--epochs",
        "1",
        "--batch_size",
        "8",
        "--gpu_devices",
        "cpu",
        "--output_dir",
        str(root / "out"),
        "--num_workers",
        str(workers),
        *extra,
    ]


def run_folder(root):
    (folder,) = glob.glob(str(root / "out" / "Vanilla" / "*"))
    return folder


@pytest.fixture(autouse=True)
def truncated_images_stay_errors():
    yield
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.fixture
def no_workers_left():
    """Fail if a run leaves DataLoader worker processes behind (then kill them: they ignore
    SIGTERM, and a live one would hold up the end of the test session)."""
    before = set(multiprocessing.active_children())
    yield
    left = [c for c in multiprocessing.active_children() if c not in before]
    for child in left:
        child.kill()
        child.join()
    assert not left, f"{len(left)} DataLoader worker(s) still running after the run"


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", sorted(BAD))
def test_broken_image_stops_the_run_naming_it(tmp_path, capsys, no_workers_left, kind, workers):
    bad = image_folder(tmp_path, kind)
    status, err = run_main(VanillaTrainer, argv_for(tmp_path, bad, workers), capsys)
    assert status == 1, err
    assert bad in error_line(status, err)
    assert os.path.isfile(os.path.join(run_folder(tmp_path), "Vanilla_exception_ckpt.pth"))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", sorted(BAD))
def test_broken_image_is_skipped_and_listed(tmp_path, capsys, no_workers_left, kind, workers):
    bad = image_folder(tmp_path, kind)
    status, err = run_main(VanillaTrainer, argv_for(tmp_path, bad, workers, "--bad_images", "skip"), capsys)
    assert status == 0, err
    folder = run_folder(tmp_path)
    assert pathlib.Path(folder, "bad_images.txt").read_text().split() == [bad]
    (log,) = glob.glob(os.path.join(folder, "Vanilla_*_log.txt"))
    assert f"skipped unreadable image {bad}" in pathlib.Path(log).read_text()
    assert os.path.isfile(os.path.join(folder, "Vanilla_best_ckpt.pth"))


@pytest.mark.parametrize("kind", sorted(BAD))
def test_more_bad_images_than_allowed_stops_the_run(tmp_path, capsys, kind):
    bad = image_folder(tmp_path, kind)
    argv = argv_for(tmp_path, bad, 0, "--bad_images", "skip", "--max_bad_images", "0")
    status, err = run_main(VanillaTrainer, argv, capsys)
    assert status == 1, err
    assert "--max_bad_images=0" in error_line(status, err)


def move_to_test_split(root, bad):
    """Move the broken file from ``train/b`` to ``test/b``; returns its new path."""
    moved = root / "test" / "b" / os.path.basename(bad)
    os.replace(bad, moved)
    return str(moved)


@pytest.mark.parametrize("split", ["val", "test"])
def test_bad_images_outside_training_are_listed_logged_and_limited(tmp_path, capsys, split):
    bad = image_folder(tmp_path, "text")
    if split == "test":
        bad = move_to_test_split(tmp_path, bad)
    status, err = run_main(VanillaTrainer, argv_for(tmp_path, bad, 0, "--bad_images", "skip", split=split), capsys)
    assert status == 0, err
    folder = run_folder(tmp_path)
    assert pathlib.Path(folder, "bad_images.txt").read_text().split() == [bad]
    (log,) = glob.glob(os.path.join(folder, "Vanilla_*_log.txt"))
    assert f"skipped unreadable image {bad}" in pathlib.Path(log).read_text()
    # The same run with no bad image tolerated must stop, whichever split the file is in.
    argv = argv_for(tmp_path, bad, 0, "--bad_images", "skip", "--max_bad_images", "0", split=split)
    status, err = run_main(VanillaTrainer, argv + ["--output_dir", str(tmp_path / "strict")], capsys)
    assert status == 1, err
    assert "--max_bad_images=0" in error_line(status, err)


def test_script_exits_when_a_validation_image_fails_in_a_worker(tmp_path):
    """A real process: the failing validation loader's workers (which ignore SIGTERM) must not
    keep the interpreter from exiting after the error line."""
    bad = image_folder(tmp_path, "text")
    argv = argv_for(tmp_path, bad, 2, split="val")
    try:
        proc = subprocess.run(
            [sys.executable, "trainer_vanilla.py", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=45,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("trainer_vanilla.py did not exit within 45 s after an unreadable validation image")
    assert proc.returncode == 1, proc.stderr
    assert bad in error_line(proc.returncode, proc.stderr)


def test_one_skipped_image_leaves_exactly_the_others_trained_and_max_bad_images_1_finishes(tmp_path):
    bad = image_folder(tmp_path, sorted(BAD)[0])
    trainer = VanillaTrainer.from_argv(argv_for(tmp_path, bad, 0, "--bad_images", "skip", "--max_bad_images", "1"))
    seen = []
    step = trainer.train_step
    trainer.train_step = lambda batch: (seen.append(len(batch[1])), step(batch))[1]
    trainer.fit()  # one bad file is within --max_bad_images 1: the run finishes
    assert trainer.epoch == 1
    assert sum(seen) == len(trainer.datasets["train"]) - 1  # every sample once, but the unreadable one
    assert pathlib.Path(trainer.run_dir, "bad_images.txt").read_text().split() == [bad]
