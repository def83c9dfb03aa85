"""``utils.submit``: the launcher's argument handling, and a real local submitit job interrupted and requeued.

The job test runs ``trainer_vanilla.py`` on Digits through submitit's ``LocalExecutor`` and sends its task
USR2, as the local controller does near a time-out (and SLURM before a time limit): the task must stop the
trainer with a ``preempt`` checkpoint and requeue it with ``--resume`` of the same run folder.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from utils import submit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 600


def children(parent, marker):
    """Pids of the processes started by ``parent`` whose command line holds ``marker`` (bytes)."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(stat[:-4] + "cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == parent and marker in cmdline:
            pids.append(int(stat.split("/")[2]))
    return pids


def submitit_signal():
    import submitit

    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


def wait_for(pattern, job, timeout=90):
    deadline = time.time() + timeout
    while not glob.glob(pattern):
        assert job.state == "RUNNING" and time.time() < deadline, (job.stdout(), job.stderr())
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the job's task")
def test_local_job_interrupted_is_requeued_and_resumes_its_run_folder(tmp_path):
    out = tmp_path / "runs"
    opts, script, trainer_args = submit.parse(
        [
            "--cluster",
            "local",
            "--gpus_per_node",
            "0",
            "--time",
            "30",
            "trainer_vanilla.py",
            "--output_dir",
            str(out),
            "--gpu_devices",
            "cpu",
            "--max_steps",
            str(STEPS),
            "--batch_size",
            "8",
            "--save_every_steps",
            "50",
        ]
    )
    job = submit.submit(opts, script, trainer_args)
    wait_for(str(out / "Vanilla" / "*" / "Vanilla_step*_ckpt.pth"), job)
    (task,) = children(job._process.pid, b"submitit.core._submit")
    (trainer,) = children(task, b"trainer_vanilla.py")
    for pid in (trainer, task):  # as SLURM signals each process of the job before its time limit
        os.kill(pid, submitit_signal())
    assert job.results() == [0], job.stderr()

    (run,) = [d for d in (out / "Vanilla").iterdir() if d.name != "submitit"]  # one run folder, continued
    log = next(run.glob("*_log.txt")).read_text()
    assert "SIGTERM: stopped after step" in log, log
    preempt = str(run / "Vanilla_preempt_ckpt.pth")
    assert f"resumed from {preempt} at epoch" in log, log
    (resumed,) = json.loads(next(run.glob("config_*.json")).read_text())["meta"]["resumes"]
    assert resumed["checkpoint"] == preempt
    steps = [int(line.split(",")[1]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps[-1] == STEPS and steps == sorted(set(steps)), steps
    assert (run / "test_metrics.json").is_file() and (run / "Vanilla_last_ckpt.pth").is_file()
    assert f"requeueing with --resume {run}" in job.stdout()
    assert os.readlink(run / "submitit") == os.path.join("..", "submitit", job.job_id)
    assert os.path.samefile(run / "submitit", job.paths.folder)
    assert (run / "submitit" / f"{job.job_id}_0_log.err").is_file()


def test_task_runs_the_script_as_a_child_and_reports_its_status(tmp_path, monkeypatch, capsys):
    for key, value in {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "7",
        "SUBMITIT_LOCAL_NTASKS": "1",
        "SUBMITIT_LOCAL_GLOBALID": "0",
        "SUBMITIT_LOCAL_LOCALID": "0",
        "RANK": "3",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(submit, "SIGNAL_DELAY_S", 0.1)
    script = tmp_path / "fake_trainer.py"  # exits with its argument if it was started as a trainer should be
    script.write_text(
        "import os, signal, sys\n"
        f"ok = signal.getsignal({int(submitit_signal())}) == signal.SIG_IGN\n"
        "ok = ok and 'RANK' not in os.environ and os.getcwd() == os.path.dirname(__file__)\n"
        "sys.exit(int(sys.argv[1]) if ok else 99)\n"
    )
    project = str(tmp_path / "runs" / "Fake")
    assert submit.TrainerTask(str(script), ["0"], project)() == 0
    with pytest.raises(RuntimeError, match="fake_trainer.py exited with status 1;"):
        submit.TrainerTask(str(script), ["1"], project)()
    with pytest.raises(RuntimeError, match="status 143"):  # SIGTERM'd, and no requeue signal came
        submit.TrainerTask(str(script), ["143"], project)()
    assert "waiting 0.1 s for the requeue" in capsys.readouterr().out


def test_split_at_the_entry_script_leaves_trainer_flags_untouched():
    argv = ["--nodes", "2", "--time", "240", "trainer_vit.py", "--data_type", "ELPV", "--config", "x.py"]
    assert submit.split_argv(argv) == (
        ["--nodes", "2", "--time", "240"],
        "trainer_vit.py",
        ["--data_type", "ELPV", "--config", "x.py"],
    )
    assert submit.split_argv(["--nodes", "2"]) == (["--nodes", "2"], None, [])


def test_with_resume_replaces_any_resume_given():
    assert submit.with_resume(["--resume", "auto", "--lr", "1", "--resume=old"], "/r/run") == [
        "--lr",
        "1",
        "--resume",
        "/r/run",
    ]
    assert submit.with_resume(["--epochs", "3", "--resume", "auto"], None) == ["--epochs", "3"]


def test_checkpoint_resumes_the_jobs_new_run_folder_or_restarts_without_one(tmp_path):
    project = tmp_path / "Vanilla"
    (project / "2020-01-01_00-00-00").mkdir(parents=True)  # an older run: never the one resumed
    (project / "2020-01-01_00-00-00" / "Vanilla_last_ckpt.pth").touch()
    task = submit.TrainerTask(
        os.path.join(ROOT, "trainer_vanilla.py"), ["--resume", "auto", "--epochs", "3"], str(project)
    )
    assert task.checkpoint().function.trainer_args == ["--epochs", "3"]  # before the trainer started
    task._before = task._runs()
    (project / "submitit").mkdir()
    new = project / "2020-01-02_00-00-00"
    new.mkdir()  # the job's run, stopped before its first checkpoint
    requeued = task.checkpoint().function
    assert requeued.trainer_args == ["--epochs", "3"] and requeued.run_dir is None
    (new / "Vanilla_preempt_ckpt.pth").touch()
    requeued = task.checkpoint().function
    assert requeued.trainer_args == ["--epochs", "3", "--resume", str(new)] and requeued.run_dir == str(new)
    assert requeued.checkpoint().function.trainer_args == ["--epochs", "3", "--resume", str(new)]


def test_distributed_variables_only_for_several_tasks(monkeypatch):
    env = {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "7",
        "SUBMITIT_LOCAL_NTASKS": "1",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_GLOBALID": "0",
        "SUBMITIT_LOCAL_LOCALID": "0",
        "RANK": "5",
    }  # inherited from the submitting shell: must not reach a single task's trainer
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not set(submit.DIST_VARS) & set(submit.child_environ())
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "2")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "1")
    monkeypatch.setenv("SUBMITIT_LOCAL_LOCALID", "1")
    child = submit.child_environ()
    assert {k: child[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")} == {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
    }
    assert child["MASTER_ADDR"] and 20000 <= int(child["MASTER_PORT"]) <= 60000


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--nodes", "0", "trainer_vanilla.py"], ["--nodes=0", "at least 1"]),
        (["--cluster", "local", "--nodes", "2", "trainer_vanilla.py"], ["--nodes=2", "--cluster local"]),
        (["--gpus_per_node", "1", "trainer_vanilla"], ["no entry script"]),
        (["--cluster", "local", "no_such_trainer.py"], ["no_such_trainer.py", "no such entry script"]),
        (["--time", "soon", "trainer_vanilla.py"], ["--time", "soon"]),
    ],
)
def test_bad_input_is_one_error_line_with_status_2(argv, names, capsys):
    with pytest.raises(SystemExit) as exit_info:
        submit.parse(argv)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("python -m utils.submit: error:") and all(n in line for n in names), line


def test_command_line_errors_for_a_script_that_is_no_trainer(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "utils.submit", "--cluster", "local", "base/runtime/params.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "params.py: not a trainer entry script" in line, line
