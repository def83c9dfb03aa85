"""utils.export: ONNX / TorchScript / torch.export files of a Digits run match PyTorch on its validation inputs (CPU).

The exported files are read back here with onnxruntime, ``torch.jit.load`` and ``torch.export.load`` and
compared with the best checkpoint's model on the run's own validation images, independently of the
script's own check.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from base.checkpoint.files import load_checkpoint
from trainers.vanilla_trainer import VanillaTrainer
from utils import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_BATCH = 32  # the run's validation loader batch: the size a non-dynamic export fixes
ATOL = 1e-4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``(trainer, best checkpoint path, reference model in eval mode, val images float32 (N, 1, 8, 8))``.

    A one-epoch Vanilla MLP (it has dropout, so train/eval mode matters) on 30% of Digits; N >= 2 * EVAL_BATCH.
    """
    trainer = VanillaTrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path_factory.mktemp("export")),
            "--gpu_devices",
            "cpu",
            "--epochs",
            "1",
            "--train_val_sample_rate",
            "0.5",
            "--eval_batch_size",
            str(EVAL_BATCH),
        ]
    )
    trainer.fit()
    best = trainer.checkpointer.path("best")
    model = trainer.model
    model.load_state_dict(load_checkpoint(best)["model"])
    pixels = torch.stack([trainer.datasets["val"][i][0] for i in range(len(trainer.datasets["val"]))])
    assert pixels.dtype == torch.uint8 and len(pixels) >= 2 * EVAL_BATCH
    images = trainer.inputs.to_device(pixels)  # the model's input: (x / 255 - mean) / std
    assert images.dtype == torch.float32
    return trainer, best, model.eval(), images


def _checked_card(card_json, trainer):
    """The model card inside an export equals the run's, whose recipe rebuilds the inputs checked on."""
    card = json.loads(card_json)
    assert card == json.loads(json.dumps(trainer.model_card()))
    assert card["input"]["mean"] == [0.5] and card["input"]["transform"]["resize"] == "square"
    assert card["input_shape"] == [1, 8, 8] and card["input"]["layout"] == "NCHW"
    return card


def _export(capsys, *argv):
    """``(status, stdout, stderr)`` of ``utils.export.main`` in this process."""
    status = export.main([*argv, "--gpu_devices", "cpu"])
    out, err = capsys.readouterr()
    return status, out, err


def _reported_difference(out):
    return float(re.search(r"largest absolute difference (\S+)", out).group(1))


def _difference(model, images, outputs):
    with torch.no_grad():
        return float((model(images) - torch.as_tensor(outputs)).abs().max())


def test_onnx_matches_pytorch_on_validation_inputs_at_any_batch_size(run, capsys):
    import onnxruntime

    trainer, best, model, images = run
    status, out, err = _export(capsys, "--model_path", best, "--format", "onnx", "--dynamic_batch", "--batches", "2")
    assert status == 0, err
    path = best.replace("_ckpt.pth", "_ckpt.onnx")  # beside the checkpoint by default
    # The script's own check: the first two validation batches, then half of the first (another batch size).
    assert f"wrote {path}" in out and "batch dynamic); checked on 3 batch(es) of 32, 32, 16 validation" in out
    assert _reported_difference(out) <= ATOL
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (feed,) = session.get_inputs()
    assert feed.type == "tensor(float)" and feed.shape[1:] == [1, 8, 8] and not isinstance(feed.shape[0], int)
    _checked_card(session.get_modelmeta().custom_metadata_map["model_card"], trainer)
    for batch in (images[:EVAL_BATCH], images[EVAL_BATCH : 2 * EVAL_BATCH], images[:7], images[-1:]):
        (logits,) = session.run(None, {feed.name: batch.numpy()})
        assert logits.shape == (len(batch), 10) and _difference(model, batch, logits) <= ATOL


def test_exported_program_without_dynamic_batch_fixes_the_batch_size(run, capsys):
    trainer, best, model, images = run
    path = os.path.join(trainer.run_dir, "fixed.pt2")
    status, out, err = _export(
        capsys, "--model_path", best, "--format", "exported_program", "--batches", "3", "--output", path
    )
    assert status == 0, err
    # The validation split's third batch is smaller than the first: it cannot run through a fixed-size file.
    assert "checked on 2 batch(es) of 32, 32 validation" in out and "1 batch(es) of another size skipped" in out
    extra = {"model_card.json": ""}
    loaded = torch.export.load(path, extra_files=extra).module()
    _checked_card(extra["model_card.json"], trainer)
    with torch.no_grad():
        assert _difference(model, images[:EVAL_BATCH], loaded(images[:EVAL_BATCH])) <= ATOL
        with pytest.raises(Exception, match="32"):
            loaded(images[:5])


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_of_the_safetensors_export_matches(run, capsys):
    trainer, best, model, images = run
    weights = os.path.join(trainer.run_dir, "Vanilla_best.safetensors")
    status, out, err = _export(capsys, "--model_path", weights, "--format", "torchscript")
    assert status == 0, err
    path = os.path.join(trainer.run_dir, "Vanilla_best.torchscript.pt")
    assert f"wrote {path}" in out and _reported_difference(out) <= ATOL
    extra = {"model_card.json": ""}
    loaded = torch.jit.load(path, _extra_files=extra)
    _checked_card(extra["model_card.json"], trainer)
    with torch.no_grad():
        assert _difference(model, images[:EVAL_BATCH], loaded(images[:EVAL_BATCH])) <= ATOL


def test_a_difference_above_atol_is_one_line_status_1_and_no_file(run, capsys, monkeypatch):
    trainer, best, _, _ = run
    path = os.path.join(trainer.run_dir, "off.pt")
    real = export.load_export
    monkeypatch.setattr(export, "load_export", lambda *a: lambda x: [y + 1e-3 for y in real(*a)(x)])
    status, _, err = _export(capsys, "--model_path", best, "--format", "torchscript", "--output", path)
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert f"{path}: the export's outputs differ from PyTorch's by up to 0.001 (> --atol 0.0001)" in err
    assert not os.path.exists(path)


def test_an_output_folder_that_does_not_exist_is_one_line_status_1(run, capsys):
    status, out, err = _export(capsys, "--model_path", run[1], "--format", "onnx", "--output", "no/such/x.onnx")
    assert (
        status == 1
        and err.strip() == f"{export.PROG}: error: --output no/such/x.onnx: no such folder {os.path.abspath('no/such')}"
        and not out
    )


@pytest.mark.parametrize(
    "argv,status,message",
    [
        (["--model_path", "no/such.pth", "--format", "onnx"], 1, "--model_path no/such.pth: no such file"),
        (["--model_path", "x.pth", "--format", "tflite"], 2, "argument --format: invalid choice: 'tflite'"),
        (["--model_path", "x.pth", "--format", "onnx", "--atol", "-1"], 2, "--atol=-1.0: must be a finite number >= 0"),
        (["--model_path", "x.pth", "--format", "onnx", "--output", "x.pth"], 2, "--output='x.pth': is the checkpoint"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag_or_file(argv, status, message, capsys):
    got, out, err = _export(capsys, *argv)
    assert got == status and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not out


def test_the_module_runs_as_a_script(run, tmp_path):
    _, best, _, _ = run
    path = str(tmp_path / "script.torchscript.pt")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "utils.export",
            "--model_path",
            best,
            "--format",
            "torchscript",
            "--output",
            path,
            "--gpu_devices",
            "cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert _reported_difference(proc.stdout) <= ATOL and os.path.getsize(path) > 0
