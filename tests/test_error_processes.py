"""Bad input to the real entry scripts: one error line, the right exit status, nothing lost.

Each case starts a root script (``trainer_vanilla.py``, ``eval_vanilla.py``,
``eval_vit.py``, ``predict.py``) as its own process with the repository as its
working folder, and checks the exit status, that stderr holds no traceback,
that its last line is the one ``error:`` line naming the culprit (flag, file,
key or value), and, where a run folder is involved, that every file in it
still holds the same bytes. The broken inputs are derived from one tiny real
run built once per module (3 steps on Digits, which ships with scikit-learn).

A process spends seconds importing torch, so the cases of :data:`CASES` are
all started at once by a module fixture (a few at a time) and each
parametrized test checks its own finished process.
"""

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import types

import pytest
import torch

from base.checkpoint.files import load_checkpoint, save_checkpoint
from base.errors import UserError
from base.run.folder import create_run_dir, record_resume, write_config
from base.run.row_files import MetricsCSV
from trainers.vanilla_trainer import VanillaTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--max_steps", "3", "--train_val_sample_rate", "0.2", "--gpu_devices", "cpu"]
# A line the run's logger writes to stderr: "12:34:56 INFO run folder: ...".
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR) ")


def run(script, *argv, env=None, timeout=180):
    """The finished process of ``python <script> <argv>`` run in the repository."""
    return subprocess.run(
        [sys.executable, script, *map(str, argv)], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def error_line(proc, status, *names):
    """The last stderr line of ``proc``, after checking it is the one error line that names every ``names``.

    Only the run's log lines may come before it.
    """
    err = proc.stderr
    assert proc.returncode == status, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = err.rstrip("\n").splitlines()
    assert lines, "nothing on stderr"
    last, before = lines[-1], lines[:-1]
    assert ": error: " in last, lines
    assert all(LOG_LINE.match(line) for line in before), before
    for name in names:
        assert str(name) in last, (name, last)
    return last


def snapshot(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    folder = pathlib.Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


#: The trainer a ViT checkpoint records (these tests derive foreign checkpoints from a Vanilla run's).
VIT_REF = "trainers.vit_trainer:ViTTrainer"


class DigitsSubtask(VanillaTrainer):
    """A task whose module the evaluator's process cannot import: VanillaTrainer under another name."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny real run, trained by ``trainer_vanilla.py --output_dir ~/runs`` with HOME set to a tmp folder.

    Returns a namespace: ``home``, ``run_dir`` (pathlib), ``best``/``last`` checkpoints, ``config`` (the
    run's config JSON) and ``sub_best``, the best checkpoint of a :class:`DigitsSubtask` run (trained in
    this process: the class exists only here).
    """
    home = tmp_path_factory.mktemp("home")
    proc = run("trainer_vanilla.py", *TINY, "--output_dir", "~/runs", env={**os.environ, "HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (home / "runs" / "Vanilla").iterdir()
    sub = DigitsSubtask.from_argv([*TINY, "--output_dir", str(tmp_path_factory.mktemp("sub"))])
    sub.fit()
    return types.SimpleNamespace(
        home=home,
        run_dir=run_dir,
        best=run_dir / "Vanilla_best_ckpt.pth",
        last=run_dir / "Vanilla_last_ckpt.pth",
        config=next(run_dir.glob("config_*.json")),
        sub_best=pathlib.Path(sub.checkpointer.path("best")),
    )


def derive_checkpoint(source, target, change):
    """Write ``target``: the checkpoint ``source`` after ``change(state)``, with a matching checksum."""
    state = load_checkpoint(str(source))
    change(state)
    save_checkpoint(state, str(target))
    return target


def with_config(**values):
    """A ``change`` for :func:`derive_checkpoint` that sets flag values in the checkpoint's saved config."""

    def change(state):
        state["config"] = json.dumps({**json.loads(state["config"]), **values})

    return change


def edit_json(path, change):
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(change(doc) or doc))


class RunsACommand:
    """Pickles as a call of os.system: loading it unsafely would run the command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@dataclasses.dataclass
class Case:
    """One process to run: ``python script argv``, and what its error line must be."""

    script: str
    argv: list
    status: int
    names: list  # strings its error line must contain
    watched: pathlib.Path = None  # a folder whose files must keep their bytes
    only_line: bool = False  # a flag or config error: that line alone on stderr, pointing to --help
    absent: pathlib.Path = None  # must not exist afterwards (refused before any run folder)
    before: dict = None


def eval_case(script, path, status, *names, watched=None):
    return Case(
        script,
        ["--model_path", path],
        status,
        [f"--model_path {path}", *names],
        watched=watched or pathlib.Path(path).parent,
    )


def config_case(path, folder, *names):
    out = folder / "out"
    return Case(
        "trainer_vanilla.py",
        ["--config", path, "--output_dir", out, "--gpu_devices", "cpu"],
        2,
        [f"--config {path}", *names],
        only_line=True,
        absent=out,
    )


# ------------------------------------------------------------------ the cases
def foreign_checkpoints(trained, folder):
    """1. A checkpoint (or export) of another trainer given to an evaluator."""
    folder = pathlib.Path(shutil.copytree(trained.run_dir, folder / "run"))
    vit = derive_checkpoint(
        trained.best,
        folder / "Vanilla_best_ckpt.pth",
        lambda s: s.update(
            trainer="ViTTrainer",
            trainer_class=VIT_REF,
            eval_script="eval_vit.py",
            model_card={**s["model_card"], "trainer": "ViTTrainer"},
        ),
    )
    edit_json(
        folder / "Vanilla_best.json",
        lambda d: d.update(
            trainer_class=VIT_REF, eval_script="eval_vit.py", model_card={**d["model_card"], "trainer": "ViTTrainer"}
        ),
    )
    refused = "eval_vanilla.py evaluates VanillaTrainer checkpoints (use eval_vit.py)"
    return {
        "vit_pth_to_eval_vanilla": eval_case("eval_vanilla.py", vit, 1, "a ViTTrainer checkpoint", refused),
        "vit_export_to_eval_vanilla": eval_case(
            "eval_vanilla.py", folder / "Vanilla_best.safetensors", 1, "a ViTTrainer checkpoint", refused
        ),
        "vanilla_pth_to_eval_vit": eval_case(
            "eval_vit.py",
            trained.best,
            1,
            "a VanillaTrainer checkpoint",
            "eval_vit.py evaluates ViTTrainer checkpoints (use eval_vanilla.py)",
        ),
        "subclass_task_to_eval_vanilla": eval_case(
            "eval_vanilla.py",
            trained.sub_best,
            1,
            "its trainer test_error_processes:DigitsSubtask comes from module test_error_processes, which is not "
            "importable here",
        ),
    }


def config_files(trained, folder):
    """2, 3. ``--config`` files: another trainer's, not an object, a malformed ``meta``, a folder."""
    doc = json.loads(trained.config.read_text())
    vit = dict(doc, meta={**doc["meta"], "trainer": "ViTTrainer"}, config={**doc["config"], "patch_size": 8})
    files = {"vit": vit, "list": [doc["config"]], "meta": dict(doc, meta=["ViTTrainer"])}
    for name, content in files.items():
        (folder / f"{name}.json").write_text(json.dumps(content))
    (folder / "config_folder").mkdir()
    return {
        "config_of_another_trainer": config_case(
            folder / "vit.json", folder, "unknown key 'patch_size'", "written by ViTTrainer", "trains VanillaTrainer"
        ),
        "config_not_an_object": config_case(folder / "list.json", folder, "expected a JSON object", "list"),
        "config_meta_not_an_object": config_case(folder / "meta.json", folder, "'meta' entry is a list"),
        "config_is_a_folder": config_case(folder / "config_folder", folder, "is a folder"),
    }


def saved_contents(trained, folder):
    """3. Checkpoints and exports whose saved config or 'model' entry is wrong (each in its own copy of the run)."""
    cases = {}
    for name in (
        "unknown_model_type",
        "export_batch_size_text",
        "model_is_a_list",
        "model_is_a_tensor",
        "resume_batch_size_list",
    ):
        run_copy = pathlib.Path(shutil.copytree(trained.run_dir, folder / name))
        ckpt, last = run_copy / "Vanilla_best_ckpt.pth", run_copy / "Vanilla_last_ckpt.pth"
        if name == "unknown_model_type":
            derive_checkpoint(ckpt, ckpt, with_config(model_type="ResNet9000"))
            cases[name] = eval_case("eval_vanilla.py", ckpt, 2, "its saved config", "model_type='ResNet9000'")
        elif name == "export_batch_size_text":
            edit_json(run_copy / "Vanilla_best.json", lambda d: d["config"].update(batch_size="lots"))
            cases[name] = eval_case(
                "eval_vanilla.py", run_copy / "Vanilla_best.safetensors", 2, "'batch_size'", "'lots'"
            )
        elif name == "model_is_a_list":
            derive_checkpoint(ckpt, ckpt, lambda s: s.update(model=[1, 2]))
            cases[name] = eval_case("eval_vanilla.py", ckpt, 1, "'model' entry is a list, not a state dict")
        elif name == "model_is_a_tensor":
            derive_checkpoint(ckpt, ckpt, lambda s: s.update(model=torch.zeros(3)))
            cases[name] = eval_case("eval_vanilla.py", ckpt, 1, "'model' entry is a Tensor, not a state dict")
        else:  # the checkpoint whose saved value is bad is named
            derive_checkpoint(last, last, with_config(batch_size=[64]))
            cases[name] = Case(
                "trainer_vanilla.py",
                ["--resume", last],
                2,
                [str(last), "'batch_size'", "expected an integer, got [64]"],
                watched=run_copy,
                only_line=True,
            )
    return cases


def run_folders(trained, folder):
    """4. ``<output_dir>/<proj_name>`` that cannot hold a new run folder."""
    (folder / "blocked").mkdir()
    (folder / "blocked" / "Vanilla").write_text("not a folder")
    read_only = folder / "read_only"
    (read_only / "Vanilla" / "old_run").mkdir(parents=True)
    (read_only / "Vanilla" / "old_run" / "notes.txt").write_text("kept")
    (read_only / "Vanilla").chmod(0o555)  # given back 0o755 once every process has ended
    return {
        "proj_folder_is_a_file": Case(
            "trainer_vanilla.py",
            [*TINY, "--output_dir", folder / "blocked"],
            1,
            [folder / "blocked" / "Vanilla", "a file is in the way"],
            watched=folder / "blocked",
        ),
        "proj_folder_read_only": (
            "root ignores file permissions, so a chmod 0o555 folder stays writable; proj_folder_is_a_file "
            "covers the same failure"
            if os.geteuid() == 0
            else Case(
                "trainer_vanilla.py",
                [*TINY, "--output_dir", read_only],
                1,
                [read_only / "Vanilla", "Permission denied"],
                watched=read_only,
            )
        ),
    }


def unreadable_files(trained, folder):
    """5. ``--model_path`` files that are no checkpoint; a pickle that would run code."""
    torch.save({"model": RunsACommand(f"touch {folder / 'the_pickle_ran'}")}, folder / "evil.pth")
    (folder / "a_folder.pth").mkdir()
    os.mkfifo(folder / "fifo.pth")  # opening it to read would block for ever: it must be refused unopened
    (folder / "empty.pth").write_bytes(b"")
    image = folder / "digit.png"  # never read: the checkpoint is refused first

    def predict(path, *names):
        return Case("predict.py", ["--model_path", path, image], 1, [f"--model_path {path}", *names], watched=folder)

    return {
        "malicious_pickle": eval_case(
            "eval_vanilla.py", folder / "evil.pth", 1, "refused", "code or objects other than tensors", "system"
        ),
        "a_folder": predict(folder / "a_folder.pth", "is a folder"),
        "dev_zero": (
            eval_case("eval_vit.py", pathlib.Path("/dev/zero"), 1, "not a regular file", watched=folder)
            if os.path.exists("/dev/zero")
            else "no /dev/zero here"
        ),
        "fifo": eval_case("eval_vanilla.py", folder / "fifo.pth", 1, "not a regular file"),
        "zero_bytes": predict(folder / "empty.pth", "is empty (0 bytes)"),
    }


def flags(trained, folder):
    """5. Flag errors: exactly one line ending with a pointer to --help."""
    return {
        "unknown_flag": Case(
            "trainer_vanilla.py",
            ["--no_such_flag", "1", "--output_dir", folder],
            2,
            ["unrecognized arguments: --no_such_flag 1"],
            only_line=True,
        ),
        "bad_choice_in_eval": Case(
            "eval_vanilla.py",
            ["--model_path", trained.best, "--split", "train"],
            2,
            ["--split", "'train'"],
            only_line=True,
        ),
        "missing_cuda_gpu": (
            "this machine has a CUDA GPU"
            if torch.cuda.is_available()
            else Case(
                "trainer_vanilla.py",
                [*TINY[:-2], "--gpu_devices", "cuda:0", "--output_dir", folder],
                2,
                ["--gpu_devices", "cuda:0", "no such GPU"],
                only_line=True,
                absent=folder / "Vanilla",
            )
        ),
    }


CASE_GROUPS = (foreign_checkpoints, config_files, saved_contents, run_folders, unreadable_files, flags)
CASES = [
    "vit_pth_to_eval_vanilla",
    "vit_export_to_eval_vanilla",
    "vanilla_pth_to_eval_vit",
    "subclass_task_to_eval_vanilla",
    "config_of_another_trainer",
    "config_not_an_object",
    "config_meta_not_an_object",
    "config_is_a_folder",
    "unknown_model_type",
    "export_batch_size_text",
    "model_is_a_list",
    "model_is_a_tensor",
    "resume_batch_size_list",
    "proj_folder_is_a_file",
    "proj_folder_read_only",
    "malicious_pickle",
    "a_folder",
    "dev_zero",
    "fifo",
    "zero_bytes",
    "unknown_flag",
    "bad_choice_in_eval",
    "missing_cuda_gpu",
]


# The tests beside the parametrized one that read a process of the fixture below.
EXTRA_CASES = {
    "test_debug_shows_the_traceback_of_the_raising_function": "debug",
    "test_evaluator_accepts_its_own_trainers_checkpoint": "own_checkpoint",
}


@pytest.fixture(scope="module")
def outcomes(trained, tmp_path_factory, request):
    """``{case: (Case, finished process)}``, or ``{case: (reason to skip, None)}``; every process started at once.

    Besides :data:`CASES`: ``"debug"`` (``--debug`` on a zero-byte checkpoint) and ``"own_checkpoint"``
    (``eval_vanilla.py`` on a copy of the run: it must work). Only the cases of the selected tests
    run (``pytest -k`` ...).
    """
    cases = {}
    for group in CASE_GROUPS:
        cases.update(group(trained, tmp_path_factory.mktemp(group.__name__)))
    assert sorted(cases) == sorted(CASES)
    extra = tmp_path_factory.mktemp("extra")
    (extra / "empty.pth").write_bytes(b"")
    own = pathlib.Path(shutil.copytree(trained.run_dir, extra / "own"))
    cases["debug"] = Case("eval_vanilla.py", ["--model_path", extra / "empty.pth", "--debug"], 1, [])
    cases["own_checkpoint"] = Case("eval_vanilla.py", ["--model_path", own / "Vanilla_best_ckpt.pth"], 0, [])
    selected = {
        item.callspec.params["name"] if hasattr(item, "callspec") else EXTRA_CASES.get(item.originalname)
        for item in request.session.items
        if item.module is request.module
    }
    runnable = {k: c for k, c in cases.items() if isinstance(c, Case) and k in selected}
    for case in runnable.values():
        case.before = snapshot(case.watched) if case.watched else None
    # Mostly import time: a few side by side take about half the time of one after another.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
        done = dict(zip(runnable, pool.map(lambda c: run(c.script, *c.argv), runnable.values())))
    for path in tmp_path_factory.getbasetemp().glob("run_folders*/read_only/Vanilla"):
        path.chmod(0o755)
    return {k: (c, done.get(k)) for k, c in cases.items()}


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_one_error_line_and_loses_nothing(outcomes, name):
    case, proc = outcomes[name]
    if proc is None:
        pytest.skip(case)
    line = error_line(proc, case.status, *case.names)
    if case.only_line:
        assert proc.stderr.count("\n") == 1 and line.endswith(f"(see {case.script} --help)"), proc.stderr
    if case.watched:  # (for the malicious pickle: no file made by the command it holds either)
        assert snapshot(case.watched) == case.before
    if case.absent:
        assert not case.absent.exists()
    assert "weights_only" not in line  # torch's advice to load unsafely is never passed on


def test_debug_shows_the_traceback_of_the_raising_function(outcomes):
    case, proc = outcomes["debug"]
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "in load_checkpoint" in proc.stderr
    assert f"CheckpointError: --model_path {case.argv[1]}: is empty" in proc.stderr


def test_evaluator_accepts_its_own_trainers_checkpoint(outcomes):
    case, proc = outcomes["own_checkpoint"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = pathlib.Path(str(case.argv[1]).replace(".pth", "_eval_test.json"))
    assert json.loads(results.read_text())["num_samples"] > 0


def test_tilde_output_dir_is_expanded_and_cpu_trains(trained):
    assert trained.run_dir.parent == trained.home / "runs" / "Vanilla"
    assert not os.path.exists(os.path.join(ROOT, "~"))  # not a literal "~" folder beside the scripts
    assert {"Vanilla_best_ckpt.pth", "Vanilla_last_ckpt.pth", "Vanilla_best.safetensors"} <= set(
        os.listdir(trained.run_dir)
    )
    meta = json.loads(trained.config.read_text())["meta"]
    assert meta["trainer"] == "VanillaTrainer" and meta["git_dirty"] in (True, False, None)


def test_run_folder_deleted_while_training(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "trainer_vanilla.py",
            "--epochs",
            "100000",
            "--train_val_sample_rate",
            "0.2",
            "--gpu_devices",
            "cpu",
            "--output_dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("Vanilla/*/metrics.csv")):  # training has validated once
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        (run_dir,) = (tmp_path / "Vanilla").iterdir()
        while run_dir.exists():  # the trainer may add a file between rmtree's listing and its rmdir
            shutil.rmtree(run_dir, ignore_errors=True)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # TensorBoard's writer thread may fail first: its one warning line may come before the error
    err = "\n".join(line for line in err.splitlines() if ": warning: background thread" not in line)
    error_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), 1, run_dir)


def test_writes_into_a_deleted_run_folder_raise_one_line(tmp_path):
    """The run folder's own writers, one by one (in-process): each names the gone folder."""
    folder, _ = create_run_dir(str(tmp_path), "Toy")
    metrics, config = MetricsCSV(os.path.join(folder, "metrics.csv")), os.path.join(folder, "config.json")
    metrics.write({"step": 1, "loss": 0.5})
    write_config(config, types.SimpleNamespace(lr=0.1), {"lr": "command line"})
    shutil.rmtree(folder)
    calls = {
        "metrics row": lambda: metrics.write({"step": 2, "loss": 0.4}),
        "metrics rewrite": lambda: metrics.resume(0, -1),
        "config": lambda: write_config(config, types.SimpleNamespace(lr=0.1), {}),
        "resume record": lambda: record_resume(config, types.SimpleNamespace(lr=0.1), {}, "x_last_ckpt.pth"),
    }
    for what, call in calls.items():
        with pytest.raises(UserError) as info:
            call()
        message = str(info.value)
        assert len(message.splitlines()) == 1 and f"the run folder {folder} is gone" in message, (what, message)
