"""inspect_history.py: runs' metrics.csv drawn as one PNG, best values printed, one-line errors.

Hand-written metrics.csv files for two runs of different tasks (classification
and segmentation), then one tiny real Digits run.
"""

import csv
import os
import subprocess
import sys

import pytest
from PIL import Image

from base.cli import main
from test_bad_input import expect  # pytest puts tests/ on sys.path
from trainers.vanilla_trainer import VanillaTrainer
from utils.history import HistoryInspector, read_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLS_NAME, SEG_NAME = "Vanilla/2024-01-01_00-00-00", "SegOnCarvana/2024-01-02_00-00-00"
# Rows out of step order, and step 20 twice: its first row holds the lowest
# val_loss and the highest val_top1 of the file, which the second row replaces.
CLS_CSV = """epoch,step,train_loss,lr,val_loss,val_top1,val_top5,val_seconds
3,30,0.5,0.01,1.3,58,95,0.2
1,10,2.0,0.1,1.5,40,80,0.2
2,20,1.0,0.05,0.5,99,99,0.2
2,20,0.9,0.05,1.1,55,90,0.2
4,40,0.4,0.001,1.2,57,96,0.2
"""
# val_iou ties at steps 15 and 25: the earliest is the best.
SEG_CSV = """epoch,step,train_loss,lr,val_loss,val_dice,val_iou,val_seconds
1,5,0.7,0.001,0.6,0.5,0.4,1.0
2,15,0.4,0.0005,0.3,0.8,0.7,1.0
3,25,0.3,0.0001,0.35,0.75,0.7,1.0
"""
RUN_COLOURS = {CLS_NAME: (31, 119, 180), SEG_NAME: (255, 127, 14)}  # matplotlib's C0, C1


def write_run(root, name, text):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text(text)
    return str(folder)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Work in ``tmp_path``: a default ``history.png`` (two runs) lands there, never in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def runs(tmp_path):
    """``(classification run folder, segmentation run folder)`` under ``tmp_path/Results``."""
    return write_run(tmp_path / "Results", CLS_NAME, CLS_CSV), write_run(tmp_path / "Results", SEG_NAME, SEG_CSV)


class Recorded(HistoryInspector):
    """The inspector as ``main`` runs it, keeping what ``run()`` returned in ``result``."""

    result = None

    def run(self):
        Recorded.result = super().run()
        return Recorded.result


def inspect(argv, capsys):
    """``(run()'s result, stdout lines)`` of ``main(HistoryInspector, argv)``, which must exit 0."""
    capsys.readouterr()
    Recorded.result = None
    status = main(Recorded, argv)
    captured = capsys.readouterr()
    assert status == 0 and not captured.err, captured.err
    return Recorded.result, captured.out.splitlines()


def png_colours(path):
    """Open ``path`` as a PNG of plausible size; returns ``{RGB colour: pixel count}``."""
    assert os.path.getsize(path) > 10_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 400 and image.height >= 300, image.size
        return {colour: n for n, colour in image.convert("RGB").getcolors(1 << 24)}


def drawn(pixels, colour):
    """Whether lines of ``colour`` were drawn: its legend entry alone has under 100 pixels."""
    return pixels.get(colour, 0) > 300


def test_two_runs_overlaid_with_best_values(runs, tmp_path, capsys):
    result, out = inspect(list(runs), capsys)
    assert result["png"] == "history.png" and out[0].startswith("wrote history.png")
    pixels = png_colours(tmp_path / "history.png")
    assert all(drawn(pixels, colour) for colour in RUN_COLOURS.values())  # both runs were drawn
    assert result["panels"] == [
        ("train_loss", "val_loss"),
        ("val_top1",),
        ("val_top5",),
        ("val_dice",),
        ("val_iou",),
        ("lr",),
    ]
    # The second row of step 20 counts: val_loss 1.1, not 0.5; val_top1 58 at step 30, not 99.
    assert result["best"][CLS_NAME] == {"val_loss": (1.1, 20), "val_top1": (58.0, 30), "val_top5": (96.0, 40)}
    assert result["best"][SEG_NAME] == {"val_loss": (0.3, 15), "val_dice": (0.8, 15), "val_iou": (0.7, 15)}
    cls_line = next(line for line in out if CLS_NAME in line)
    seg_line = next(line for line in out if SEG_NAME in line)
    assert "val_loss 1.1 (min) at step 20" in cls_line and "val_top1 58 (max) at step 30" in cls_line
    assert "val_dice 0.8 (max) at step 15" in seg_line and "val_dice" not in cls_line
    assert len(out) == 3 and "val_seconds" not in "\n".join(out)


def test_runs_of_the_same_name_are_told_apart_by_path(tmp_path, capsys):
    a = write_run(tmp_path / "a", CLS_NAME, CLS_CSV)
    b = write_run(tmp_path / "b", CLS_NAME, CLS_CSV.replace("1.1,55", "0.7,55"))
    result, out = inspect([a, b, a + os.sep, "--out", str(tmp_path / "x.png"), "--metrics", "val_loss"], capsys)
    assert result["best"] == {a: {"val_loss": (1.1, 20)}, b: {"val_loss": (0.7, 20)}}  # a given twice: once
    assert len(out) == 3


def test_rows_are_sorted_by_step_and_the_last_duplicate_wins(runs):
    columns = read_history(runs[0]).columns
    assert "step" not in columns  # the x axis of every column
    assert columns["val_loss"] == ([10, 20, 30, 40], [1.5, 1.1, 1.3, 1.2])
    assert columns["epoch"][1] == [1.0, 2.0, 3.0, 4.0]


def test_one_run_writes_into_its_folder(runs, capsys):
    result, out = inspect([runs[1]], capsys)
    path = os.path.join(runs[1], "history.png")
    assert result["png"] == path and out[0].startswith(f"wrote {path}")
    png_colours(path)


def test_metrics_flag_restricts_the_panels(runs, tmp_path, capsys):
    out = str(tmp_path / "picked.png")
    result, lines = inspect([*runs, "--out", out, "--metrics", "val_dice,val_loss,train_loss"], capsys)
    assert result["png"] == out
    pixels = png_colours(out)
    assert result["panels"] == [("val_dice",), ("val_loss", "train_loss")]
    assert result["best"][CLS_NAME] == {"val_loss": (1.1, 20)}
    assert result["best"][SEG_NAME] == {"val_dice": (0.8, 15), "val_loss": (0.3, 15)}
    assert "val_top1" not in "\n".join(lines)
    assert all(drawn(pixels, colour) for colour in RUN_COLOURS.values())


def test_run_without_any_plotted_val_metric_says_so(runs, tmp_path, capsys):
    result, lines = inspect([*runs, "--out", str(tmp_path / "x.png"), "--metrics", "val_dice"], capsys)
    assert result["best"][CLS_NAME] == {}
    assert f"  {CLS_NAME}: best none (no plotted val_* column)" in lines


@pytest.mark.parametrize("case", ["no_csv", "empty", "header_only", "not_a_number", "no_step", "no_such_folder"])
def test_bad_run_folder_exits_1_naming_it(runs, tmp_path, capsys, case):
    bad = tmp_path / "Results" / "Bad" / "run"
    if case != "no_such_folder":
        bad.mkdir(parents=True)
    text = {
        "empty": "",
        "header_only": CLS_CSV.splitlines()[0] + "\n",
        "not_a_number": CLS_CSV.replace("2,20,0.9,0.05,1.1", "2,20,0.9,0.05,oops"),
        "no_step": CLS_CSV.replace("epoch,step,", "epoch,iteration,"),
    }.get(case)
    if text is not None:
        (bad / "metrics.csv").write_text(text)
    names = [str(bad / "metrics.csv") if text is not None else str(bad)]
    if case == "not_a_number":
        names += ["line 5", "val_loss", "'oops'"]
    if case == "no_step":
        names += ["no step column"]
    expect(HistoryInspector, [runs[0], str(bad)], capsys, 1, *names)
    assert not os.path.exists("history.png") and not os.path.exists(os.path.join(runs[0], "history.png"))


def test_metric_that_no_run_has_exits_1_naming_it(runs, capsys):
    line = expect(HistoryInspector, [*runs, "--metrics", "val_top1,val_miou"], capsys, 1, "--metrics", "val_miou")
    assert "val_top1," not in line.split("(")[0]  # only the missing name is blamed


def test_out_must_be_a_png_exits_2(runs, capsys):
    expect(HistoryInspector, [runs[0], "--out", "history.jpg"], capsys, 2, "--out", "history.jpg")


def test_entry_script_gives_one_line_error(tmp_path):
    # A real process: the script ends through base.cli.exit_fast, which would end pytest in-process.
    done = subprocess.run(
        [sys.executable, "inspect_history.py", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"inspect_history.py: error: {tmp_path}: no metrics.csv in this folder (has it validated yet?)\n"
    )


def test_real_run(tmp_path, capsys):
    trainer = VanillaTrainer.from_argv(
        ["--epochs", "2", "--train_val_sample_rate", "0.2", "--gpu_devices", "cpu", "--output_dir", str(tmp_path)]
    )
    trainer.fit()
    with open(os.path.join(trainer.run_dir, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    result, out = inspect([trainer.run_dir], capsys)
    name = "Vanilla/" + os.path.basename(trainer.run_dir)
    assert out[1].startswith(f"  {name}: best val_loss ")
    png_colours(os.path.join(trainer.run_dir, "history.png"))
    assert result["panels"] == [
        ("train_loss", "val_loss"),
        ("val_top1",),
        ("val_top5",),
        ("val_balanced_acc",),
        ("lr",),
    ]
    top1 = max(rows, key=lambda r: float(r["val_top1"]))  # max() keeps the earliest of equals
    assert result["best"][name]["val_top1"] == (float(top1["val_top1"]), int(top1["step"]))
    loss = min(rows, key=lambda r: float(r["val_loss"]))
    assert result["best"][name]["val_loss"] == (float(loss["val_loss"]), int(loss["step"]))
