"""utils.sweep: an Optuna study of trainer runs that continues, prunes, and is shared by processes."""

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--data_type", "Digits", "--batch_size", "32", "--train_val_sample_rate", "0.3", "--test_fraction", "0.1"]


def sweep_command(out, space, trials, *extra):
    return [sys.executable, "-m", "utils.sweep", "trainer_vanilla.py", "--space", str(space), "--trials", str(trials),
            *TINY, "--output_dir", str(out), "--proj_name", "digits", *extra]  # fmt: skip


def write_space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def load_study(out):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    (journal,) = glob.glob(os.path.join(out, "digits", "sweep_*", "study.journal"))
    return optuna.load_study(study_name="sweep", storage=JournalStorage(JournalFileBackend(journal)))


def trial_runs(out):
    """{trial number: (config, status)} of the study's run folders."""
    runs = {}
    for path in glob.glob(os.path.join(out, "digits", "sweep_*", "*", "config_*.json")):
        with open(path) as f:
            saved = json.load(f)
        with open(os.path.join(os.path.dirname(path), "status.json")) as f:
            status = json.load(f)
        number = int(os.path.basename(saved["config"]["sweep_trial"]).split("_")[1])
        assert number not in runs, f"trial {number} ran twice"
        runs[number] = (saved, status, os.path.dirname(path))
    return runs


def run(command, timeout=600):
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_sweep_of_2_trials_continues_to_3_with_a_second_command(tmp_path):
    # no pruner: this is about continuing a study (pruning has its own test)
    space = write_space(tmp_path, "lr: {low: 1e-3, high: 1e-1, log: true}\nweight_decay: [0.0, 0.05]\n")
    run(sweep_command(tmp_path, space, 2, "--epochs", "1", "--pruner", "none"))
    first = trial_runs(tmp_path)
    assert sorted(first) == [0, 1]
    for number, (saved, status, _) in first.items():
        assert status["status"] == "finished"
        params = load_study(tmp_path).trials[number].params
        for flag, value in params.items():  # the trial's values, with their provenance
            assert saved["config"][flag] == value and saved["provenance"][flag] == f"sweep trial {number}"
        assert load_study(tmp_path).trials[number].value == pytest.approx(status["best"])

    second = run(sweep_command(tmp_path, space, 3, "--epochs", "1", "--pruner", "none"))
    assert "continuing study" in second.stdout
    runs = trial_runs(tmp_path)
    assert sorted(runs) == [0, 1, 2]
    for number in range(2):  # the first two were not run again
        assert runs[number][2] == first[number][2] and runs[number][1]["resumes"] == 0
    study = load_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    best = study.best_trial
    assert f"best trial {best.number}: val_top1 {best.value:.4f}" in second.stdout
    assert f"--lr {best.params['lr']}" in second.stdout.split("reproduce:")[1]
    folder = os.path.dirname(runs[0][2])
    assert os.path.getsize(os.path.join(folder, "optimization_history.png")) > 0
    assert os.path.getsize(os.path.join(folder, "param_importances.png")) > 0


def test_a_trial_worse_than_the_median_is_pruned_and_marked_pruned(tmp_path):
    # lr 1e-7 learns nothing: once a good trial has finished, a 1e-7 trial is below its median at epoch 1.
    space = write_space(tmp_path, "lr: [0.01, 1.0e-7]\n")
    # Optuna's RandomSampler(seed=6) draws 0.01, 0.01, 1e-7: the third trial is the poor one.
    command = sweep_command(tmp_path, space, 3, "--epochs", "3", "--sampler", "random", "--n_startup_trials", "1",
                            "--seed", "6")  # fmt: skip
    done = run(command)
    study = load_study(tmp_path)
    states = {t.number: t.state.name for t in study.trials}
    pruned = [n for n, s in states.items() if s == "PRUNED"]
    assert pruned == [2], (states, [t.params for t in study.trials])
    runs = trial_runs(tmp_path)
    for number in pruned:
        saved, status, run_dir = runs[number]
        assert saved["config"]["lr"] == 1e-7 and status["status"] == "pruned"
        assert status["epoch"] < 3 and not os.path.exists(os.path.join(run_dir, "test_metrics.json"))
        assert study.trials[number].intermediate_values  # the run reported before it was pruned
        assert f"trial {number}: pruned" in done.stdout
    for number, state in states.items():
        if state == "COMPLETE":
            assert runs[number][1]["status"] == "finished" and runs[number][1]["epoch"] == 3


def test_two_processes_sharing_one_study_run_disjoint_trials_and_each_trial_every_seed(tmp_path):
    space = write_space(tmp_path, "lr: {low: 1e-3, high: 1e-1, log: true}\n")
    command = sweep_command(tmp_path, space, 2, "--epochs", "1", "--seeds", "0,1")
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    assert len(glob.glob(os.path.join(tmp_path, "digits", "sweep_*"))) == 1  # one study for both
    runs = {}  # (trial, seed) -> (best, whether it reports)
    for path in glob.glob(os.path.join(tmp_path, "digits", "sweep_*", "*", "config_*.json")):
        with open(path) as f:
            config = json.load(f)["config"]
        with open(os.path.join(os.path.dirname(path), "status.json")) as f:
            best = json.load(f)["best"]
        with open(config["sweep_trial"]) as f:
            trial = json.load(f)
        key = (trial["trial"], config["seed"])
        assert key not in runs, f"trial {key} ran twice"
        runs[key] = (best, trial["report"])
    assert sorted(runs) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # 2 trials in all, each seed of each once
    study = load_study(tmp_path)
    assert len(study.trials) == 2
    for t in study.trials:  # a trial's value is its seeds' mean; only the first seed reports to the pruner
        assert t.value == pytest.approx((runs[t.number, 0][0] + runs[t.number, 1][0]) / 2)
        assert (runs[t.number, 0][1], runs[t.number, 1][1]) == (True, False)
        assert list(t.intermediate_values) == [1]
    owners = {t.number: t.user_attrs["pid"] for t in study.trials}
    assert set(owners.values()) == {p.pid for p in procs}  # both took trials, none took the same
    for proc, (stdout, _) in zip(procs, outputs):
        mine = sorted(n for n, pid in owners.items() if pid == proc.pid)
        assert sorted(int(line.split()[1].rstrip(":")) for line in stdout.splitlines()
                      if line.startswith("trial ")) == mine  # fmt: skip


@pytest.mark.parametrize(
    "text, message",
    [
        ("lrr: {low: 1, high: 2}\n", "lrr: no such flag of VanillaTrainer"),
        ("lr: {low: 1e-2, high: 1e-3}\n", "lr: low 1e-2 must be below high 1e-3"),
        ("lr: {low: 0, high: 1e-3, log: true}\n", "lr: log: true needs low > 0"),
        ("model_type: [Vanilla, NoSuchNet]\n", "'NoSuchNet' is not one of --model_type's choices"),
        ("batch_size: {low: 8, high: 64.5}\n", "batch_size: --batch_size takes integers"),
        ("seed: [0, 1]\n", "seed: a sweep sets it itself"),
        ("lr: []\n", "lr: an empty list of choices"),
        ("lr: 0.1\n", "lr: expected a list of choices or {low, high[, log][, step]}"),
        ("- lr\n", "expected a mapping of trainer flags"),
        ("lr: {low: 1\n", "not valid YAML"),
    ],
)
def test_a_bad_space_file_is_one_line(tmp_path, capsys, text, message):
    from utils import sweep

    space = write_space(tmp_path, text)
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["trainer_vanilla.py", "--space", str(space), "--trials", "2", "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and f"--space {space}" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "Experiment")  # no study folder


def test_a_searched_flag_given_to_the_trainer_too_is_refused(tmp_path, capsys):
    from utils import sweep

    space = write_space(tmp_path, "lr: [0.1, 0.01]\n")
    with pytest.raises(SystemExit):
        sweep.main(["trainer_vanilla.py", "--space", str(space), "--trials", "2", "--lr", "0.5"])
    assert "lr: it is searched; leave --lr out of the trainer flags" in capsys.readouterr().err


def test_the_readmes_example_space_reads():
    from trainers.vanilla_trainer import VanillaTrainer
    from utils.sweep_space import read_space

    space = read_space(os.path.join(ROOT, "example_runs", "digits_space.yaml"), VanillaTrainer)
    assert set(space) == {"lr", "weight_decay", "batch_size", "model_type"}
    assert space["lr"].log and space["lr"].low == 1e-4 and space["batch_size"].choices == (32, 64, 128)


def test_a_killed_sweep_asks_its_running_trial_again_and_resumes_its_run(tmp_path):
    import signal
    import time

    space = write_space(tmp_path, "lr: {low: 1e-3, high: 1e-1, log: true}\n")
    command = sweep_command(tmp_path, space, 2, "--epochs", "3")
    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:  # kill the sweep and its trainer (one process group) once trial 0's run has a checkpoint
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            runs = glob.glob(os.path.join(tmp_path, "digits", "sweep_*", "*", "*_last_ckpt.pth"))
            if runs:
                break
            time.sleep(0.05)
        else:
            pytest.fail("trial 0 wrote no checkpoint before the sweep ended")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (killed_run,) = [os.path.dirname(p) for p in runs]
    assert load_study(tmp_path).trials[0].state.name == "RUNNING"

    again = run(command)
    assert "trial 0: its sweep process is gone; asked again with the same flags" in again.stdout
    study = load_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]  # 2 counted, as asked
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 0)
    assert retry.params == study.trials[0].params
    with open(os.path.join(killed_run, "status.json")) as f:
        status = json.load(f)
    assert status["status"] == "finished" and status["resumes"] == 1 and status["epoch"] == 3  # resumed, not redone
    assert retry.value == pytest.approx(status["best"])
    run_dirs = {os.path.dirname(p) for p in glob.glob(os.path.join(tmp_path, "digits", "sweep_*", "*", "config_*"))}
    assert len(run_dirs) == 2  # the resumed run and the other trial's


def test_ctrl_c_stops_the_running_trial_with_a_checkpoint_and_asks_no_other(tmp_path):
    import signal
    import time

    space = write_space(tmp_path, "lr: {low: 1e-3, high: 1e-1, log: true}\n")
    proc = subprocess.Popen(sweep_command(tmp_path, space, 3, "--epochs", "40"), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if glob.glob(os.path.join(tmp_path, "digits", "sweep_*", "*", "*_last_ckpt.pth")):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the sweep and its trial's run
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("sweep: interrupted; run the same command again to continue")
    study = load_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["RUNNING"]  # left for the next command to resume
    (saved, status, _) = trial_runs(tmp_path)[0]
    assert status["status"] == "preempted"
