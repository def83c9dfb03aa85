"""Start-up cost: importing an entry script (all that --help needs) must not import the heavy
libraries a run only needs later. Times live in bench/startup.py; this pins the cause."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = (
    "torchvision",
    "sklearn",
    "matplotlib",
    "tensorboard",
    "torch.utils.tensorboard",
    "timm",
    "safetensors",
    "torch._dynamo",
)
SCRIPTS = ("trainer_vanilla", "trainer_vit", "trainer_seg_on_carvana", "trainer_seg", "predict")

PROBE = """
import importlib, json, sys
found = {}
for name in %r:
    before = set(sys.modules)
    importlib.import_module(name)
    found[name] = sorted(m for m in %r if m in sys.modules)
print(json.dumps(found))
"""


def test_entry_scripts_import_no_heavy_library_before_it_is_needed():
    out = subprocess.run(
        [sys.executable, "-c", PROBE % (SCRIPTS, HEAVY)], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(out) == {name: [] for name in SCRIPTS}


def test_help_exits_0_and_lists_the_flags():
    done = subprocess.run([sys.executable, "trainer_vanilla.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "--accum_steps" in done.stdout and "--data_type" in done.stdout
