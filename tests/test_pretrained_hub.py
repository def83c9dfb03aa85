"""--pretrained: published weights read from a local Hugging Face / torch.hub cache with the real loading code.

Each test writes a model's own random weights where the hub caches them (``<HF_HOME>/hub/models--timm--<name>/``:
``snapshots/<commit>/model.safetensors`` linked to ``blobs/<sha256>``, and ``refs/main``;
``$TORCH_HOME/hub/checkpoints/<name>-<hash>.pth``), sets ``HF_HUB_OFFLINE=1`` and forbids sockets, then
fine-tunes on ELPV (real 1-channel images) at a tiny size: the model starts from those tensors (the RGB stem
summed to one channel, a ViT's position embedding resampled, a new head for the data's classes), each
adaptation is one line of the run log, and the weights' statistics are the defaults of --mean/--std/--image_size
with their provenance. Then --freeze_epochs and the offline message.
"""

import glob
import hashlib
import json
import os
import socket

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from base.cli import main
from base.hooks import HookBase
from evaluators.vit_evaluator import ViTEvaluator
from trainers.fine_tuning import FINE_TUNING_LR
from trainers.vit_trainer import ViTTrainer

RESNET, VIT = "resnet18.a1_in1k", "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # any 40 hex digits: refs/main names the snapshot
# ELPV: 4 classes of grey 300x300 cells, resized to 32 (a cached size); a few images, one or two steps.
ELPV = [
    "--data_type",
    "ELPV",
    "--image_size",
    "32",
    "--gpu_devices",
    "cpu",
    "--batch_size",
    "8",
    "--train_val_sample_rate",
    "0.02",
    "--test_sample_rate",
    "0.01",
    "--max_steps",
    "2",
]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """A Hugging Face home whose hub cache holds random weights of RESNET and VIT, laid out as the hub
    lays them out; ``{name: state dict}`` of what was written."""
    home, written = tmp_path_factory.mktemp("hf"), {}
    for name in (RESNET, VIT):
        torch.manual_seed(0)
        state = timm.create_model(name, pretrained=False).state_dict()  # 3 channels, 224, 1000 classes
        repo = home / "hub" / f"models--timm--{name}"
        for folder in ("blobs", "refs", f"snapshots/{COMMIT}"):
            (repo / folder).mkdir(parents=True)
        (repo / "refs" / "main").write_text(COMMIT)
        # the file is a blob named by its hash; the snapshot holds a relative link to it
        save_file({k: v.contiguous() for k, v in state.items()}, str(repo / "blobs" / "weights"))
        blob = repo / "blobs" / hashlib.sha256((repo / "blobs" / "weights").read_bytes()).hexdigest()
        os.rename(repo / "blobs" / "weights", blob)
        os.symlink(os.path.join("..", "..", "blobs", blob.name), repo / "snapshots" / COMMIT / "model.safetensors")
        written[name] = state
    return home, written


@pytest.fixture
def offline(monkeypatch):
    """``HF_HUB_OFFLINE=1``, and any socket connection fails the test: nothing may try the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


class FirstWeights(HookBase):
    """Keeps a copy of the model's tensors as training starts."""

    def before_train(self):
        self.state = {k: v.detach().clone() for k, v in self.trainer.raw_model.state_dict().items()}


def fine_tune(tmp_path, argv):
    """Fine-tune on ELPV; ``(trainer, its tensors at the first step, its run log, its saved config)``."""
    trainer = ViTTrainer.from_argv(["--output_dir", str(tmp_path / "runs"), *ELPV, "--pretrained", *argv])
    first = FirstWeights()
    trainer.build_hooks = lambda: [first]
    trainer.fit()
    (log_file,) = glob.glob(os.path.join(trainer.run_dir, "*_log.txt"))
    with open(log_file, encoding="utf-8") as f:
        log = f.read()
    with open(trainer.folder.config_path, encoding="utf-8") as f:
        config = json.load(f)
    return trainer, first.state, log, config


def assert_starts_from(state, saved, stem, head, pos_embed=None, grid=None):
    """Every tensor of ``saved`` is in ``state`` as it was, but the stem (summed over RGB), the head (new,
    4 classes) and the position embedding (resampled to ``grid``)."""
    assert set(state) == set(saved)
    for key, value in saved.items():
        if key == stem:
            assert value.shape[1] == 3 and state[key].shape[1] == 1
            torch.testing.assert_close(state[key], value.sum(1, keepdim=True), rtol=0, atol=0)
        elif key in (f"{head}.weight", f"{head}.bias"):
            assert value.shape[0] == 1000 and state[key].shape[0] == 4  # ELPV's 4 classes
        elif key == pos_embed:
            torch.testing.assert_close(
                state[key], resample_abs_pos_embed(value, list(grid), num_prefix_tokens=1), rtol=0, atol=0
            )
        else:
            assert torch.equal(state[key], value), key


def test_a_timm_resnet_starts_from_the_cached_weights_with_a_grey_stem_and_a_new_head(
    tmp_path, hf_home, offline, monkeypatch
):
    home, written = hf_home
    monkeypatch.setenv("HF_HOME", str(home))
    trainer, state, log, config = fine_tune(tmp_path, ["--model_type", f"timm/{RESNET}", "--mean", "0.4"])
    assert_starts_from(state, written[RESNET], "conv1.weight", "fc")
    assert trainer.raw_model.conv1.weight.shape == (64, 1, 7, 7) and trainer.raw_model.fc.out_features == 4
    source = f"--pretrained timm/{RESNET}"
    path = home / "hub" / f"models--timm--{RESNET}" / "snapshots" / COMMIT / "model.safetensors"
    for line in (
        f"{source}: reading {path}",
        (
            f"{source}: conv1.weight: stem for 3 input channels summed to 1 channel (timm adapt_input_conv): "
            f"(64, 3, 7, 7) -> (64, 1, 7, 7)"
        ),
        f"{source}: fc.weight not loaded: shape (1000, 512) in the file, (4, 512) in the model",
        f"{source}: fc.bias not loaded: shape (1000,) in the file, (4,) in the model",
    ):
        assert log.count(f" INFO {line}\n") == 1, line
    assert log.count("conv1.weight") == 1 and "adapted" in log  # one line for the stem, then the summary
    # The weights' statistics are the defaults; the command line's --mean wins; each says where it came from.
    values, provenance = config["config"], config["provenance"]
    weights = f"pretrained weights (timm/{RESNET})"
    assert values["mean"] == [0.4] and provenance["mean"] == "command line"
    assert values["std"] == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    assert provenance["std"] == f"{weights}, averaged over RGB for --data_type ELPV's 1 channel"
    assert (values["crop_pct"], provenance["crop_pct"]) == (0.95, weights)
    assert (values["image_size"], provenance["image_size"]) == (32, "command line")
    assert (values["lr"], provenance["lr"]) == (FINE_TUNING_LR, "the fine-tuning default of --pretrained")
    assert trainer.inputs.describe()["mean"] == pytest.approx([0.4])
    # A resume takes every tensor from its checkpoint: it reads no cache (here an empty one) and logs no adaptation.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    resumed = ViTTrainer.from_argv(["--resume", trainer.run_dir, "--max_steps", "3"])
    resumed.fit()
    assert resumed.global_step == 3
    with open(glob.glob(os.path.join(trainer.run_dir, "*_log.txt"))[0], encoding="utf-8") as f:
        assert f.read().count(f"{source}: conv1.weight") == 1
    # Nor does evaluating the checkpoint: it holds the weights and the statistics they were trained with.
    evaluator = ViTEvaluator.from_argv(["--model_path", resumed.checkpointer.path("best"), "--gpu_devices", "cpu"])
    evaluator.run()
    assert evaluator.task.inputs.describe()["mean"] == pytest.approx([0.4])


def test_a_timm_vit_at_another_size_gets_its_position_embedding_resampled(tmp_path, hf_home, offline, monkeypatch):
    home, written = hf_home
    monkeypatch.setenv("HF_HOME", str(home))
    trainer, state, log, config = fine_tune(tmp_path, ["--model_type", f"timm/{VIT}"])
    # 224 / 16 = 14x14 patches in the file; 32 / 16 = 2x2 here, after the class token
    assert_starts_from(state, written[VIT], "patch_embed.proj.weight", "head", "pos_embed", (2, 2))
    assert state["pos_embed"].shape == (1, 5, 192) and written[VIT]["pos_embed"].shape == (1, 197, 192)
    source = f"--pretrained timm/{VIT}"
    for line in (
        (
            f"{source}: patch_embed.proj.weight: stem for 3 input channels summed to 1 channel (timm "
            f"adapt_input_conv): (192, 3, 16, 16) -> (192, 1, 16, 16)"
        ),
        (
            f"{source}: pos_embed: position embedding resampled from 14x14 to 2x2 patches, 1 prefix token(s) "
            f"kept (timm resample_abs_pos_embed, bicubic): (1, 197, 192) -> (1, 5, 192)"
        ),
        f"{source}: head.weight not loaded: shape (1000, 192) in the file, (4, 192) in the model",
    ):
        assert log.count(f" INFO {line}\n") == 1, line
    weights = f"pretrained weights (timm/{VIT}), averaged over RGB for --data_type ELPV's 1 channel"
    assert config["config"]["mean"] == [0.5] and config["provenance"]["mean"] == weights


def test_the_weights_choose_the_image_size_unless_the_command_line_does():
    def parsed(*argv):
        trainer = ViTTrainer.from_argv(["--gpu_devices", "cpu", "--data_type", "ELPV", "--pretrained", *argv])
        return {k: (getattr(trainer.args, k), trainer.provenance[k]) for k in ("image_size", "mean", "lr")}

    weights = f"pretrained weights (timm/{RESNET})"
    got = parsed("--model_type", f"timm/{RESNET}")
    assert got["image_size"] == (224, weights)
    assert got["mean"] == (pytest.approx([(0.485 + 0.456 + 0.406) / 3]), f"{weights}, averaged over RGB for "
                           "--data_type ELPV's 1 channel")  # fmt: skip
    got = parsed("--model_type", f"timm/{RESNET}", "--image_size", "48", "--lr", "0.01")
    assert got["image_size"] == (48, "command line") and got["lr"] == (0.01, "command line")
    # torchvision's weights: their resize and crop (224 of 256), 3 values on RGB data
    trainer = ViTTrainer.from_argv(
        ["--gpu_devices", "cpu", "--data_type", "Digits", "--pretrained", "--model_type", "resnet18"]
    )
    tv = "pretrained weights (torchvision ResNet18_Weights.IMAGENET1K_V1)"
    assert (trainer.args.crop_pct, trainer.provenance["crop_pct"]) == (0.875, tv)
    assert trainer.provenance["image_size"] != tv  # Digits are 8x8 whatever --image_size says
    without = ViTTrainer.from_argv(["--gpu_devices", "cpu", "--data_type", "ELPV", "--model_type", f"timm/{RESNET}"])
    assert without.args.lr == 1e-3 and without.args.mean == [0.5] and without.args.image_size == 64


def test_torchvisions_vit_b_16_takes_the_patch_size_of_its_weights(capsys):
    argv = ["--gpu_devices", "cpu", "--pretrained", "--model_type", "vit_b_16"]
    trainer = ViTTrainer.from_argv(argv)
    tv = "pretrained weights (torchvision ViT_B_16_Weights.IMAGENET1K_V1)"
    assert (trainer.args.patch_size, trainer.provenance["patch_size"]) == (16, tv)
    assert (trainer.args.image_size, trainer.provenance["image_size"]) == (224, tv)
    with pytest.raises(SystemExit):
        ViTTrainer.from_argv([*argv, "--patch_size", "8"])
    assert "--patch_size=8: torchvision ViT_B_16_Weights.IMAGENET1K_V1 has 16x16 patches" in capsys.readouterr().err


@pytest.mark.parametrize(
    "model_type, twin",
    [
        ("vit_ti_16", "vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
        ("vit_s_16", "vit_small_patch16_224.augreg_in21k_ft_in1k"),
    ],
)
def test_the_zoo_vits_without_published_weights_are_refused_naming_the_timm_twin(model_type, twin, capsys):
    with pytest.raises(SystemExit) as exit:
        main(ViTTrainer, ["--gpu_devices", "cpu", "--pretrained", "--model_type", model_type])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"--model_type {model_type} has no published weights" in err and f"--model_type timm/{twin}" in err


def test_torchvision_weights_come_from_torch_home(tmp_path, offline, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    from torchvision.models import resnet18

    saved = resnet18().state_dict()
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    # the name of its URL, as torchvision caches it (the hash in it is checked only on request)
    torch.save(saved, folder / "resnet18-f37072fd.pth", _use_new_zipfile_serialization=False)
    trainer, state, log, config = fine_tune(tmp_path, ["--model_type", "resnet18"])
    assert_starts_from(state, saved, "conv1.weight", "fc")
    source = "--pretrained torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert f" INFO {source}: reading {folder / 'resnet18-f37072fd.pth'}\n" in log
    assert log.count(f"{source}: conv1.weight: stem for 3 input channels summed to 1 channel") == 1
    assert config["provenance"]["crop_pct"] == "pretrained weights (torchvision ResNet18_Weights.IMAGENET1K_V1)"


@pytest.mark.parametrize("model_type", [f"timm/{RESNET}", "resnet18"])
def test_an_empty_cache_offline_is_one_line_naming_the_file_the_folder_and_how_to_fetch_it(
    tmp_path, offline, monkeypatch, capsys, model_type
):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    status = main(
        ViTTrainer, ["--output_dir", str(tmp_path / "runs"), *ELPV, "--pretrained", "--model_type", model_type]
    )
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    if model_type.startswith("timm/"):
        hub = tmp_path / "hf" / "hub"
        assert line == (
            f"trainer_vit.py: error: --pretrained timm/{RESNET}: model.safetensors or pytorch_model.bin of the "
            f"Hugging Face repo timm/{RESNET} is not in the cache {hub} and HF_HUB_OFFLINE is set; on a machine "
            f"with a network run python -c \"import timm; timm.create_model('{RESNET}', pretrained=True)\" and "
            f"copy its ~/.cache/huggingface/hub/models--timm--{RESNET} folder into {hub}"
        )
    else:
        folder = tmp_path / "torch" / "hub" / "checkpoints"
        assert line == (
            f"trainer_vit.py: error: --pretrained torchvision ResNet18_Weights.IMAGENET1K_V1: resnet18-f37072fd.pth "
            f"is not in the cache {folder} and HF_HUB_OFFLINE is set; on a machine with a network run python -c "
            f"\"import torchvision; torchvision.models.resnet18(weights='DEFAULT')\" and copy "
            f"~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth into {folder} (or download "
            f"https://download.pytorch.org/models/resnet18-f37072fd.pth)"
        )


def test_an_empty_cache_without_a_network_says_the_download_failed(tmp_path, offline, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online as far as we know: a download is tried (and meets no network)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    argv = ["--output_dir", str(tmp_path / "runs"), *ELPV, "--pretrained", "--model_type", f"timm/{RESNET}"]
    assert main(ViTTrainer, argv) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"trainer_vit.py: error: --pretrained timm/{RESNET}: model.safetensors or pytorch_model.bin of the Hugging "
        f"Face repo timm/{RESNET} is not in the cache {tmp_path / 'hf' / 'hub'} and the download failed ("
    )
    assert line.endswith(f"folder into {tmp_path / 'hf' / 'hub'}")


class EpochWeights(HookBase):
    """The model's parameters at the start and after each epoch."""

    def __init__(self):
        self.seen = []

    def before_train(self):
        self.seen.append({k: v.detach().clone() for k, v in self.trainer.raw_model.named_parameters()})

    def after_epoch(self):
        self.before_train()


def test_freeze_epochs_trains_only_the_head_then_everything(tmp_path):
    # timm's tiny test_resnet from scratch (the rule is the same with --pretrained); AdamW with weight decay,
    # which would move a frozen tensor that still had a gradient of zeros.
    argv = [*ELPV, "--max_steps", "0", "--epochs", "2", "--model_type", "timm/test_resnet", "--weight_decay", "0.05"]
    trainer = ViTTrainer.from_argv(["--output_dir", str(tmp_path), *argv, "--freeze_epochs", "1"])
    record = EpochWeights()
    trainer.build_hooks = lambda: [*ViTTrainer.build_hooks(trainer), record]
    trainer.fit()
    start, frozen, thawed = record.seen
    head = {"fc.weight", "fc.bias"}
    assert all(not torch.equal(frozen[k], start[k]) for k in head)  # the head learnt in epoch 1
    assert all(torch.equal(frozen[k], start[k]) for k in start if k not in head)  # nothing else, not even decay
    assert all(not torch.equal(thawed[k], frozen[k]) for k in start)  # epoch 2: everything learns
    (log_file,) = glob.glob(os.path.join(trainer.run_dir, "*_log.txt"))
    with open(log_file, encoding="utf-8") as f:
        log = f.read()
    assert (
        f"--freeze_epochs 1: only the classifier head trains until epoch 1 ends (2 of the model's {len(start)} "
        f"parameter tensors), then the whole model"
    ) in log
    assert log.count("epoch 2: the whole model trains from here (--freeze_epochs 1)") == 1
