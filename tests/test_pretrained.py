"""--pretrained_path: a file that fits nothing is refused in one line; an RGB stem and a ViT position
embedding of another size are adapted with timm's helpers; every adaptation and shape mismatch reaches
the run log."""

import glob
import os

import pytest
import torch
from timm.layers import resample_abs_pos_embed

from base.checkpoint.files import save_checkpoint
from base.cli import main
from base.errors import CheckpointError
from model.pretrained import load_pretrained, load_state
from model.unet import UNet
from model.zoo import build_zoo_model
from trainers.vit_trainer import ViTTrainer

# Digits: 1-channel 8x8 images, 10 classes, bundled with scikit-learn; a tiny share keeps the run short.
DIGITS = [
    "--data_type",
    "Digits",
    "--gpu_devices",
    "cpu",
    "--batch_size",
    "16",
    "--train_val_sample_rate",
    "0.1",
    "--test_sample_rate",
    "0.05",
]


def vit(image_size, in_chans, num_classes=5, seed=0):
    torch.manual_seed(seed)
    return build_zoo_model("vit_ti_16", num_classes, in_chans=in_chans, image_size=image_size, patch_size=4)


def test_a_unet_checkpoint_into_a_classifier_is_refused_in_one_line_and_nothing_trains(tmp_path, capsys):
    save_checkpoint({"model": UNet(3, 1).state_dict(), "epoch": 4}, str(tmp_path / "unet.pth"))
    out = tmp_path / "runs"
    # --max_steps 1: were the file not refused, one step would train and save (and the test stays short)
    status = main(
        ViTTrainer,
        [
            "--output_dir",
            str(out),
            *DIGITS,
            "--model_type",
            "resnet18",
            "--max_steps",
            "1",
            "--pretrained_path",
            str(tmp_path / "unet.pth"),
        ],
    )
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert err.rstrip("\n").splitlines()[-1] == (
        f"trainer_vit.py: error: --pretrained_path {tmp_path / 'unet.pth'}: only 0 of the 122 tensors of this "
        f"ResNet are in the file with a shape that fits (0 of another shape, 118 of the file's 118 not the model's): "
        f"weights of another model? Nothing was loaded"
    )
    assert not glob.glob(str(out / "**" / "*_ckpt.pth"), recursive=True)  # no step was trained, nothing saved
    assert not glob.glob(str(out / "**" / "metrics.csv"), recursive=True)


def test_a_file_with_half_of_the_tensors_loads_and_one_with_fewer_is_refused():
    model = build_zoo_model("resnet18", 2)
    state = model.state_dict()
    keys = list(state)
    half = {k: state[k] for k in keys[: (len(keys) + 1) // 2]}
    assert load_state(model, half, "half").loaded == len(half)
    with pytest.raises(CheckpointError, match=f"^less: only {len(half) - 1} of the {len(keys)} tensors"):
        load_state(model, dict(list(half.items())[:-1]), "less")


@pytest.mark.parametrize("name", ["resnet18", "vit_ti_16"])
def test_an_rgb_stem_is_summed_to_one_channel(tmp_path, name):
    kwargs = {"image_size": 16, "patch_size": 4}
    torch.manual_seed(0)
    torch.save(build_zoo_model(name, 3, in_chans=3, **kwargs).state_dict(), tmp_path / "rgb.pth")
    gray = build_zoo_model(name, 3, in_chans=1, **kwargs)
    report = load_pretrained(gray, tmp_path / "rgb.pth")
    stem = {"resnet18": "conv1.weight", "vit_ti_16": "conv_proj.weight"}[name]
    saved = torch.load(tmp_path / "rgb.pth", weights_only=True)[stem]
    assert saved.shape[1] == 3 and gray.state_dict()[stem].shape[1] == 1
    torch.testing.assert_close(gray.state_dict()[stem], saved.sum(1, keepdim=True), rtol=0, atol=0)
    assert list(report.adapted) == [stem] and report.missing == [] and report.mismatched == {}


def test_a_vit_trained_at_another_size_gets_its_position_embedding_resampled(tmp_path):
    save_checkpoint({"model": vit(16, 1).state_dict()}, str(tmp_path / "at16.pth"))  # 4x4 patches + class token
    at24 = vit(24, 1, seed=1)  # 6x6 patches
    report = load_pretrained(at24, tmp_path / "at16.pth")
    saved = vit(16, 1).encoder.pos_embedding.detach()
    got = at24.encoder.pos_embedding.detach()
    assert saved.shape == (1, 17, 192) and got.shape == (1, 37, 192)
    torch.testing.assert_close(got, resample_abs_pos_embed(saved, [6, 6], num_prefix_tokens=1), rtol=0, atol=0)
    torch.testing.assert_close(got[:, :1], saved[:, :1], rtol=0, atol=0)  # the class token's, as it was
    assert list(report.adapted) == ["encoder.pos_embedding"] and report.loaded == report.total


def test_the_run_log_names_each_adaptation_and_each_shape_mismatch(tmp_path):
    # RGB, 16x16 and 5 classes in the file; the run: Digits' 1 channel, 8x8 and 10 classes.
    saved = vit(16, 3, num_classes=5).state_dict()
    save_checkpoint({"model": saved}, str(tmp_path / "rgb16.pth"))
    trainer = ViTTrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path / "runs"),
            *DIGITS,
            "--patch_size",
            "4",
            "--pretrained_path",
            str(tmp_path / "rgb16.pth"),
        ]
    )
    try:
        trainer.setup()  # the run folder and its log, then the model: what a run does before its first step
    finally:
        trainer.release()
    torch.testing.assert_close(
        trainer.raw_model.conv_proj.weight.detach(), saved["conv_proj.weight"].sum(1, keepdim=True), rtol=0, atol=0
    )
    (log_file,) = glob.glob(os.path.join(trainer.run_dir, "*_log.txt"))
    with open(log_file, encoding="utf-8") as f:
        log = f.read()
    source = f"--pretrained_path {tmp_path / 'rgb16.pth'}"
    for line in (
        (
            f"{source}: conv_proj.weight: stem for 3 input channels summed to 1 channel (timm adapt_input_conv): "
            f"(192, 3, 4, 4) -> (192, 1, 4, 4)"
        ),
        (
            f"{source}: encoder.pos_embedding: position embedding resampled from 4x4 to 2x2 patches, 1 prefix "
            f"token(s) kept (timm resample_abs_pos_embed, bicubic): (1, 17, 192) -> (1, 5, 192)"
        ),
        f"{source}: heads.head.weight not loaded: shape (5, 192) in the file, (10, 192) in the model",
        f"{source}: heads.head.bias not loaded: shape (5,) in the file, (10,) in the model",
        (f"{source}: loaded 150 of the model's 152 tensors (2 adapted, 2 of another shape, 2 missing, 0 unexpected)"),
    ):
        assert f" INFO {line}\n" in log, line


@pytest.mark.parametrize("kind", ["torchvision_legacy_pth", "pytorch_model_bin", "timm_train_checkpoint", "hub_blob"])
def test_state_dict_files_of_torchvision_hugging_face_and_timm_load(tmp_path, kind):
    from argparse import Namespace

    from safetensors.torch import save_file

    saved = vit(16, 1).state_dict()
    path = tmp_path / {"torchvision_legacy_pth": "vit-0123abcd.pth", "pytorch_model_bin": "pytorch_model.bin"}.get(
        kind, kind
    )
    if kind == "torchvision_legacy_pth":  # torchvision's older releases: the pickle format before zip files
        torch.save(saved, path, _use_new_zipfile_serialization=False)
    elif kind == "pytorch_model_bin":
        torch.save(saved, path)
    elif kind == "timm_train_checkpoint":  # timm's train.py: the weights beside the run's flags and optimizer
        torch.save({"epoch": 3, "arch": "vit", "state_dict": saved, "args": Namespace(lr=0.1), "version": 2}, path)
    else:  # a Hugging Face cache blob: a safetensors file named by its hash, no extension
        save_file(saved, str(path))
    model = vit(16, 1, seed=1)
    report = load_pretrained(model, path)
    assert report.loaded == report.total and not report.adapted
    for key, value in saved.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_pickle_with_code_is_still_refused(tmp_path):
    torch.save({"state_dict": vit(16, 1).state_dict(), "hook": print}, tmp_path / "code.pth")
    with pytest.raises(CheckpointError, match="not a readable state dict .*UnpicklingError"):
        load_pretrained(vit(16, 1), tmp_path / "code.pth")
