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


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_recipe_of_the_script_runs(tmp_path, tmp_path_factory, script):
    proj, tiny, needs_cars = SCRIPTS[script]
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "QUICK_EPOCHS": "1",
        "FULL_EPOCHS": "1",
        "EXTRA": f"--gpu_devices cpu {tiny}",
    }
    if needs_cars:
        from test_seg_trainer import seg_data

        env["DATA_DIR"] = seg_data(tmp_path_factory)
    proc = subprocess.run(
        ["bash", os.path.join("example_runs", script), "all"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(glob.glob(str(tmp_path / "out" / proj / "*")))
    assert len(runs) == 2  # the quick run (resumed) and the compared one
    assert read_status(runs[0])["status"] == "finished" and read_status(runs[0])["resumes"] == 1
    assert read_status(runs[0])["epoch"] == 2  # QUICK_EPOCHS + 1
    assert glob.glob(os.path.join(runs[0], "*_eval_test.json"))  # the eval recipe
    table = proc.stdout.split("project", 2)  # the runs table, then the --diff table
    assert len(table) == 3 and "model_type" in table[2].splitlines()[0]
    assert all(os.path.basename(r) in table[1] for r in runs)
    full = glob.glob(str(tmp_path / "out" / "*" / "*" / "status.json"))
    assert len(full) == 3 and all(read_status(os.path.dirname(p))["status"] == "finished" for p in full)
    assert (
        "unknown recipe"
        in subprocess.run(
            ["bash", os.path.join("example_runs", script), "fly"], cwd=ROOT, env=env, capture_output=True, text=True
        ).stderr
    )
