"""Real processes: SIGTERM to the whole process group, kill -9 after a periodic checkpoint, the run lock."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from base.checkpoint.files import load_checkpoint
from base.errors import UserError
from base.run.lock import RunLock
from base.run.status import read_status
from conftest import ToyTrainer
from test_bad_input import error_line, run_main
from test_resume import assert_same_state, logged
from trainers.seg_on_carvana_trainer import SegOnCarvanaTrainer
from trainers.vanilla_trainer import VanillaTrainer
from utils.runs import status_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--epochs", "15", "--train_val_sample_rate", "0.3", "--gpu_devices", "cpu", "--deterministic"]


def start(out, *extra, script="trainer_vanilla.py", flags=FLAGS):
    """Launch a trainer script in its own process group (as a cluster scheduler would)."""
    return subprocess.Popen(
        [sys.executable, script, "--output_dir", str(out), *flags, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(pattern, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = glob.glob(pattern)
        if found:
            return found
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"nothing matched {pattern} within {timeout} s")


def straight(out, *extra, cls=VanillaTrainer, flags=FLAGS):
    trainer = cls.from_argv(["--output_dir", str(out), *flags, *extra])
    trainer.fit()
    return trainer


def seg_flags(tmp_path_factory):
    from test_seg_trainer import seg_data

    return [
        "--data_dir",
        seg_data(tmp_path_factory),
        "--epochs",
        "12",
        "--batch_size",
        "4",
        "--base_channels",
        "4",
        "--gpu_devices",
        "cpu",
        "--deterministic",
    ]


# proj_name, model_type, script, trainer class, flags(tmp_path_factory), steps in the whole run
TASKS = {
    "vanilla": ("Vanilla", "Vanilla", "trainer_vanilla.py", VanillaTrainer, lambda f: FLAGS, 15 * 7),
    "seg": ("SegOnCarvana", "UNet", "trainer_seg_on_carvana.py", SegOnCarvanaTrainer, seg_flags, 12 * 3),
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_sigterm_stops_at_a_step_boundary_with_a_checkpoint_and_resume_finishes(tmp_path, tmp_path_factory, task):
    proj, model, script, cls, make_flags, total = TASKS[task]
    flags = make_flags(tmp_path_factory)
    proc = start(tmp_path / "stopped", "--num_workers", "2", script=script, flags=flags)
    wait_for(str(tmp_path / "stopped" / proj / "*" / "metrics.csv"), proc)
    os.killpg(proc.pid, signal.SIGTERM)  # the workers get it too, and must leave it to the main process
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "preempted by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    (ckpt,) = glob.glob(str(tmp_path / "stopped" / proj / "*" / f"{model}_preempt_ckpt.pth"))
    state = load_checkpoint(ckpt)
    assert 0 < state["global_step"] < total
    status = read_status(os.path.dirname(ckpt))
    assert (status["status"], status["global_step"]) == ("preempted", state["global_step"])
    resumed = cls.from_argv(["--resume", os.path.dirname(ckpt)])
    resumed.fit()
    assert status_text(read_status(resumed.run_dir)) == "finished, resumed 1x"
    assert not os.path.exists(ckpt)  # superseded by the resumed run's newer checkpoints
    reference = straight(tmp_path / "straight", "--num_workers", "2", cls=cls, flags=flags)
    assert_same_state(reference, resumed)
    assert logged(reference) == logged(resumed)


def test_kill_9_after_periodic_checkpoint_then_resume_matches_straight(tmp_path):
    proc = start(tmp_path / "killed", "--save_every_steps", "5")
    found = wait_for(str(tmp_path / "killed" / "Vanilla" / "*" / "Vanilla_step*_ckpt.pth"), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    run_dir = os.path.dirname(found[0])
    assert status_text(read_status(run_dir)) == "killed"  # it said running; its process is gone
    resumed = VanillaTrainer.from_argv(["--resume", run_dir])
    resumed.fit()
    assert resumed.run_dir == run_dir
    reference = straight(tmp_path / "straight", "--save_every_steps", "5")
    assert_same_state(reference, resumed)
    assert logged(reference) == logged(resumed)


def test_exit_does_not_hang_on_workers_left_by_an_exception(tmp_path):
    """Workers ignore SIGTERM, so multiprocessing's exit-time terminate() alone would wait forever."""
    script = tmp_path / "leftover.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {ROOT!r})
import torch
from torch.utils.data import DataLoader, Dataset
from base.runtime.signals import ignore_signals_in_worker

class Broken(Dataset):
    def __len__(self):
        return 64
    def __getitem__(self, i):
        if i == 40:
            raise ValueError("bad sample")
        return torch.zeros(2)

kept = []
try:
    for _ in DataLoader(Broken(), batch_size=4, num_workers=2, worker_init_fn=ignore_signals_in_worker):
        pass
except ValueError:
    kept.append(sys.exc_info())  # the traceback keeps the iterator, and its workers, alive
print("done")
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "done" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_ctrl_c_exits_130_with_a_preempt_checkpoint_and_a_second_one_stops_at_once(tmp_path):
    proc = start(tmp_path / "once")
    wait_for(str(tmp_path / "once" / "Vanilla" / "*" / "metrics.csv"), proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "preempted by SIGINT" in err and "Traceback" not in err
    (ckpt,) = glob.glob(str(tmp_path / "once" / "Vanilla" / "*" / "Vanilla_preempt_ckpt.pth"))
    assert load_checkpoint(ckpt)["global_step"] > 0

    proc = start(tmp_path / "twice", "--epochs", "1000")
    wait_for(str(tmp_path / "twice" / "Vanilla" / "*" / "metrics.csv"), proc)
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGINT)
    started = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.time() - started < 20, err
    assert "Traceback" not in err
    for path in glob.glob(str(tmp_path / "twice" / "Vanilla" / "*" / "Vanilla_*_ckpt.pth")):
        state = load_checkpoint(path)  # whatever was saved is whole and verifies
        assert state["samples_in_epoch"] <= 1797 and state["global_step"] > 0


def test_a_second_process_on_the_same_run_is_refused_until_the_first_is_gone(tmp_path, capsys):
    proc = start(tmp_path, "--epochs", "1000", "--save_every_steps", "5")
    (found,) = wait_for(str(tmp_path / "Vanilla" / "*" / "metrics.csv"), proc)
    run_dir = os.path.dirname(found)
    status, err = run_main(VanillaTrainer, ["--resume", run_dir], capsys)
    assert status == 1 and f"in use by process {proc.pid}" in error_line(status, err)
    os.killpg(proc.pid, signal.SIGKILL)  # the kernel drops the lock with the process
    proc.communicate(timeout=60)
    stale = os.path.join(run_dir, f".Vanilla_last_ckpt.pth.tmp{proc.pid}")  # as if killed inside a save
    with open(stale, "wb") as f:
        f.write(b"half a checkpoint")
    resumed = VanillaTrainer.from_argv(["--resume", run_dir, "--epochs", "2"])
    resumed.fit()
    assert resumed.run_dir == run_dir and not os.path.exists(stale)


def test_kill_9_with_dataloader_workers_alive_then_resume_is_not_refused(tmp_path, capsys):
    """Workers forked while the run folder is locked must not hold its lock: they outlive a kill -9 by seconds."""
    script = tmp_path / "killed_with_workers.py"
    script.write_text(f"""
import multiprocessing, os, signal, sys
sys.path[:0] = [{ROOT!r}, {os.path.join(ROOT, "tests")!r}]
from base.cli import main
from base.hooks import HookBase
from conftest import ToyTrainer

class KillAtStep3(HookBase):
    def after_step(self):
        if self.trainer.global_step == 3:  # after the step2 checkpoint
            workers = [c.pid for c in multiprocessing.active_children()]
            for pid in workers:  # orphans that stay alive, as workers do for up to ~5 s after their parent
                os.kill(pid, signal.SIGSTOP)
            open(sys.argv[1], "w").write(" ".join(map(str, workers)))
            os.kill(os.getpid(), signal.SIGKILL)

class Killed(ToyTrainer):
    def build_hooks(self):
        return [KillAtStep3()]

main(Killed, sys.argv[2:])
""")
    pids, log = tmp_path / "workers", tmp_path / "stderr.txt"
    with open(log, "w") as stderr:  # a file, not a pipe: the orphans keep their copy of it open
        proc = subprocess.run(
            [
                sys.executable,
                str(script),
                str(pids),
                "--output_dir",
                str(tmp_path),
                "--gpu_devices",
                "cpu",
                "--num_workers",
                "2",
                "--save_every_steps",
                "2",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            timeout=120,
            check=False,
        )
    workers = [int(pid) for pid in pids.read_text().split()]
    try:
        assert proc.returncode == -signal.SIGKILL and len(workers) == 2, log.read_text()
        assert all(os.path.exists(f"/proc/{pid}") for pid in workers)  # still alive (stopped) orphans
        status, err = run_main(ToyTrainer, ["--resume", "auto", "--output_dir", str(tmp_path)], capsys)
        assert status == 0 and "in use by" not in err, err
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
    (run,) = glob.glob(str(tmp_path / "Toy" / "*"))
    assert load_checkpoint(os.path.join(run, "Toy_last_ckpt.pth"))["global_step"] == 10


def test_a_second_lock_in_one_process_is_refused_and_the_first_still_holds(tmp_path):
    """Record locks are per process: the kernel would grant the second, and closing its file would drop the first."""
    first = RunLock(str(tmp_path)).acquire()
    with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
        RunLock(str(tmp_path)).acquire()
    probe = [
        sys.executable,
        "-c",
        (
            f"import sys; sys.path.insert(0, {ROOT!r}); from base.run.lock import RunLock; "
            f"RunLock({str(tmp_path)!r}).acquire()"
        ),
    ]
    other = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False)
    assert other.returncode == 1 and f"in use by process {os.getpid()}" in other.stderr
    first.release()
    assert subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False).returncode == 0


def test_ctrl_c_twice_during_the_final_test_with_workers_ends_in_one_line(tmp_path):
    """The test split's workers live in the interrupted loop's frames; freeing them joins the workers, and a
    second Ctrl-C landing there must not become a traceback from a ``__del__``."""
    script = tmp_path / "slow_test_split.py"
    script.write_text(f"""
import os, sys, time
sys.path[:0] = [{ROOT!r}, {os.path.join(ROOT, "tests")!r}]
from torch.utils.data import Dataset
from base.cli import exit_fast, main
from conftest import ToyTrainer

class Slow(Dataset):
    def __init__(self, samples, marker):
        self.samples, self.marker = samples, marker
    def __len__(self):
        return len(self.samples)
    def __getitem__(self, i):
        open(self.marker, "a").close()  # a worker is reading the test split
        time.sleep(2)  # a batch of 4 takes 8 s: the main process wakes within 5 s, its workers are still busy
        return self.samples[i]

class SlowTest(ToyTrainer):
    def build_datasets(self):
        splits = super().build_datasets()
        splits["test"] = Slow(splits["test"], os.path.join(self.args.output_dir, "testing"))
        return splits

exit_fast(main(SlowTest, sys.argv[1:]))
""")
    proc = start(
        tmp_path, "--num_workers", "2", "--eval_batch_size", "4", script=str(script), flags=["--gpu_devices", "cpu"]
    )
    wait_for(str(tmp_path / "testing"), proc)
    os.killpg(proc.pid, signal.SIGINT)
    err = []
    for line in proc.stderr:  # the second Ctrl-C once the first has stopped the run, while its workers finish
        err.append(line)
        if line.endswith(": interrupted\n"):
            time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGINT)
            break
    err.append(proc.communicate(timeout=60)[1])
    assert proc.returncode == 130, "".join(err)
    assert "Traceback" not in "".join(err) and "".join(err).rstrip().endswith("SlowTest: interrupted")
