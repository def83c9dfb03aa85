"""Every example_runs/ script runs all its recipes (quick, full, resume, eval, compare) with tiny settings."""

import glob
import os
import subprocess
import sys

import pytest

from base.run.status import read_status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# script -> (quick project, tiny flags appended to every training command, needs the synthetic cars)
SCRIPTS = {
    "vanilla_digits.sh": ("DigitsQuick", "--train_val_sample_rate 0.3", False),
    "vit_elpv.sh": (
        "ViTQuick",
        "--image_size 16 --patch_size 8 --train_val_sample_rate 0.04 --test_sample_rate 0.04 --batch_size 32",
        False,
    ),
    "seg_carvana.sh": ("SegQuick", "--image_size 32 48 --base_channels 4 --batch_size 4", True),
}


def script_env(script, out, tmp_path_factory):
    """The environment that runs ``script``'s recipes with tiny settings, writing under ``out``."""
    _, tiny, needs_cars = SCRIPTS[script]
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(out),
        "QUICK_EPOCHS": "1",
        "FULL_EPOCHS": "1",
        "EXTRA": f"--gpu_devices cpu {tiny}",
    }
    if needs_cars:
        from test_seg_trainer import seg_data

        env["DATA_DIR"] = seg_data(tmp_path_factory)
    return env


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Every script's ``all`` started at once (their processes mostly wait on Python start-up, one core each),
    then each waited for: ``{script: (CompletedProcess, out folder, env)}``."""
    started = {}
    for script in SCRIPTS:
        out = tmp_path_factory.mktemp(script.replace(".", "_")) / "out"
        env = script_env(script, out, tmp_path_factory)
        command = ["bash", os.path.join("example_runs", script), "all"]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started[script] = (proc, command, out, env)
    done = {}
    for script, (proc, command, out, env) in started.items():
        stdout, stderr = proc.communicate(timeout=400)
        done[script] = (subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), out, env)
    return done


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_recipe_of_the_script_runs(finished, script):
    proj = SCRIPTS[script][0]
    proc, out, env = finished[script]
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(glob.glob(str(out / proj / "*")))
    assert len(runs) == 2  # the quick run (resumed) and the compared one
    assert read_status(runs[0])["status"] == "finished" and read_status(runs[0])["resumes"] == 1
    assert read_status(runs[0])["epoch"] == 2  # QUICK_EPOCHS + 1
    assert glob.glob(os.path.join(runs[0], "*_eval_test.json"))  # the eval recipe
    table = proc.stdout.split("project", 2)  # the runs table, then the --diff table
    assert len(table) == 3 and "model_type" in table[2].splitlines()[0]
    assert all(os.path.basename(r) in table[1] for r in runs)
    full = glob.glob(str(out / "*" / "*" / "status.json"))
    assert len(full) == 3 and all(read_status(os.path.dirname(p))["status"] == "finished" for p in full)
    assert (
        "unknown recipe"
        in subprocess.run(
            ["bash", os.path.join("example_runs", script), "fly"], cwd=ROOT, env=env, capture_output=True, text=True
        ).stderr
    )
