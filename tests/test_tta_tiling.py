"""Test-time augmentation (utils/tta.py) and tiled inference (utils/tiling.py), on tiny models (CPU)."""

import argparse
import json

import pytest
import torch
from PIL import Image
from torch import nn

from base.cli import main
from base.errors import ConfigError
from evaluators.classifier_predictor import ClassifierPredictor
from evaluators.mae_evaluator import MAEEvaluator
from evaluators.vanilla_evaluator import VanillaEvaluator
from trainers.vanilla_trainer import VanillaTrainer
from utils.tiling import Tiled, add_tile_arguments, blend_weights, check_tile_arguments, tiled_predict
from utils.tta import TTA, describe_tta

torch.manual_seed(0)


class FlipInvariant(nn.Module):
    """Logits (N, 3) of the mean of an (N, 2, 4, 6) image and its three flips: the same for every flip."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2 * 4 * 6, 3)

    def forward(self, x):
        x = (x + x.flip(-1) + x.flip(-2) + x.flip(-2, -1)) / 4
        return self.linear(x.flatten(1))


class LeftHalf(nn.Module):
    """Spatial logits (N, 2, H, W): class 0 certain (logit 20) on the left half of the image, class 1 on the right."""

    def forward(self, x):
        n, _, h, w = x.shape
        left = (torch.arange(w) < w // 2).float().expand(n, h, w)
        return torch.stack([left, 1 - left], 1) * 20.0


def test_tta_of_a_flip_invariant_model_gives_its_probabilities():
    model, x = FlipInvariant(), torch.randn(5, 2, 4, 6)
    for mode in ("hflip", "flips"):
        assert torch.allclose(TTA(model, mode)(x).softmax(1), model(x).softmax(1), atol=1e-6)
        assert torch.allclose(TTA(model, mode, "sigmoid")(x).sigmoid(), model(x).sigmoid(), atol=1e-6)


def test_tta_averages_the_views_probabilities_not_their_logits():
    model, x = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 6, 3)), torch.randn(5, 2, 4, 6)
    views = [x, x.flip(-1)]
    by_hand = sum(model(v).softmax(1) for v in views) / 2
    out = TTA(model, "hflip")(x)
    assert out.dtype == torch.float32 and out.shape == (5, 3)
    assert torch.allclose(out.softmax(1), by_hand, atol=1e-6)
    assert torch.allclose(out.exp(), by_hand, atol=1e-6)  # log of the mean: its softmax needs no renormalising
    assert not torch.allclose(out.softmax(1), (sum(model(v) for v in views) / 2).softmax(1), atol=1e-3)
    four = [x, x.flip(-1), x.flip(-2), x.flip(-2, -1)]
    sig = sum(model(v).sigmoid() for v in four) / 4
    assert torch.allclose(TTA(model, "flips", "sigmoid")(x).sigmoid(), sig, atol=1e-6)
    assert TTA(model, "none")(x).equal(model(x))


def test_spatial_outputs_are_flipped_back_before_averaging():
    x = torch.zeros(2, 3, 4, 6)
    probs = TTA(LeftHalf(), "hflip", spatial=True)(x).softmax(1)
    # each pixel is left in one view and right in the other: 1/2 each everywhere
    assert torch.allclose(probs, torch.full_like(probs, 0.5), atol=1e-6)
    flips = TTA(LeftHalf(), "flips", "sigmoid", spatial=True)(x).sigmoid()
    # channel 0 of a left pixel: certain in the identity and vflip views, 0 (sigmoid 1/2) in the other two
    assert torch.allclose(flips, torch.full_like(flips, (torch.sigmoid(torch.tensor(20.0)).item() + 0.5) / 2))
    conv = nn.Conv2d(3, 2, 3, padding=1)  # not flip-invariant: compare with the flipped-back views by hand
    x = torch.randn(2, 3, 5, 7)
    by_hand = (conv(x).sigmoid() + conv(x.flip(-1)).flip(-1).sigmoid()) / 2
    assert torch.allclose(TTA(conv, "hflip", "sigmoid", spatial=True)(x).sigmoid(), by_hand, atol=1e-6)


def test_sigmoid_tta_of_certain_views_stays_finite():
    certain = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    nn.init.zeros_(certain[1].weight)
    nn.init.constant_(certain[1].bias, 200.0)  # sigmoid 1.0 in float32: logit(1) would be inf
    out = TTA(certain, "hflip", "sigmoid")(torch.zeros(2, 1, 2, 2))
    assert torch.isfinite(out).all() and (out > 10).all()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A two-step VanillaTrainer run on a fifth of Digits: its best checkpoint's path."""
    folder = tmp_path_factory.mktemp("vanilla")
    trainer = VanillaTrainer.from_argv(
        ["--max_steps", "2", "--train_val_sample_rate", "0.2", "--gpu_devices", "cpu", "--output_dir", str(folder)]
    )
    trainer.fit()
    return trainer.checkpointer.path("best")


def test_eval_vanilla_with_tta_says_so_and_records_it(checkpoint, capsys):
    plain = VanillaEvaluator.from_argv(["--model_path", checkpoint]).run()
    assert plain["tta"] == "none" and "TTA" not in capsys.readouterr().out
    evaluator = VanillaEvaluator.from_argv(["--model_path", checkpoint, "--tta", "hflip"])
    results = evaluator.run()
    line = describe_tta("hflip")
    assert line == "TTA hflip: mean of the softmax probabilities of 2 views (identity, horizontal flip)"
    assert line in capsys.readouterr().out.splitlines()
    saved = json.load(open(evaluator.output_path(".json")))
    assert saved["tta"] == "hflip" and saved["tta_description"] == line
    assert results["num_samples"] == plain["num_samples"]
    # Digits are not mirror-symmetric: the flipped view changes the loss the untrained-ish model gives
    assert results["loss"] != pytest.approx(plain["loss"], abs=1e-6)


def test_predict_with_tta_averages_the_image_and_its_mirror(checkpoint, tmp_path, capsys):
    pixels = torch.randint(0, 256, (8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).numpy()
    image, mirror = str(tmp_path / "digit.png"), str(tmp_path / "mirror.png")
    Image.fromarray(pixels, "L").save(image)
    Image.fromarray(pixels[:, ::-1].copy(), "L").save(mirror)

    def probs(*argv):  # {image path: [probability of class 0..9]}
        results = ClassifierPredictor.from_argv(["--model_path", checkpoint, *argv, "--topk", "10"]).run()
        return {r["image"]: [t["probability"] for t in sorted(r["top"], key=lambda t: t["index"])] for r in results}

    plain = probs(image, mirror, "--gpu_devices", "cpu")
    capsys.readouterr()
    out = tmp_path / "preds.json"
    tta = probs(image, "--gpu_devices", "cpu", "--tta", "hflip", "--output_json", str(out))
    assert tta[image] == pytest.approx([(a + b) / 2 for a, b in zip(plain[image], plain[mirror])], abs=1e-6)
    assert describe_tta("hflip") in capsys.readouterr().out.splitlines()
    doc = json.loads(out.read_text())
    assert doc["tta"] == "hflip" and doc["tta_description"] == describe_tta("hflip")


def test_eval_mae_refuses_tta_in_one_line(capsys):
    assert main(MAEEvaluator, ["--model_path", "x.pth", "--tta", "hflip"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "eval_mae.py: error: --tta='hflip': eval_mae.py scores reconstructions and k-NN features, "
        "no class probabilities to average"
    ]


# ----------------------------------------------------------------- tiling
def test_tiles_of_a_pointwise_model_equal_whole_image_inference():
    model, x = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)), torch.randn(2, 3, 32, 48)
    whole = model(x)
    for overlap, blend in ((0.0, "gaussian"), (0.5, "gaussian"), (0.5, "linear"), (0.3, "linear")):
        out = tiled_predict(model, x, (16, 16), overlap, blend, batch_size=5)
        assert out.dtype == torch.float32 and out.shape == (2, 4, 32, 48)
        assert torch.allclose(out, whole, atol=1e-5), (overlap, blend)


def test_the_centre_of_a_3x3_conv_model_matches_with_large_overlap():
    model, x = nn.Conv2d(3, 2, 3, padding=1), torch.randn(1, 3, 40, 40)
    out = Tiled(model, (16, 16), overlap=0.75, blend="gaussian")(x)
    # stride 4: every inner pixel is at least 2 pixels inside some window, where the window sees its neighbours;
    # the Gaussian weights of a window's edge pixels (zero-padded) are tiny but not zero: tolerance 1e-2
    assert torch.allclose(out[..., 4:-4, 4:-4], model(x)[..., 4:-4, 4:-4], atol=1e-2)


def test_blend_weights_are_positive_with_their_peak_in_the_middle():
    for blend in ("gaussian", "linear"):
        for tile in ((16, 16), (7, 12), (1, 3), (512, 512)):
            w = blend_weights(tile, blend)
            assert w.shape == tile and (w > 0).all() and w.max() == 1
            assert w[tile[0] // 2, tile[1] // 2] == 1
            assert w[0, 0] < 1 or tile == (1, 1)
    g = blend_weights((16, 16), "gaussian")
    # sigma 2, centre 7.5: row 0 is 7.5 from it, row 7 (a peak) 0.5
    assert g[0, 7].item() == pytest.approx(torch.exp(torch.tensor(-(7.5**2 - 0.5**2) / 8)).item(), rel=1e-5)


class Counter(nn.Module):
    """Each window's output is ones (N, 1, h, w): the blend of a pixel no window covers would be NaN (0 / 0)."""

    def forward(self, x):
        return torch.ones(x.shape[0], 1, *x.shape[-2:])


@pytest.mark.parametrize("blend", ["gaussian", "linear"])
def test_every_pixel_is_covered_for_odd_sizes(blend):
    out = tiled_predict(Counter(), torch.zeros(1, 3, 37, 53), (16, 16), 0.25, blend)
    assert out.shape == (1, 1, 37, 53) and torch.allclose(out, torch.ones_like(out))
    # the last row and column come from the window aligned to the end, not from padding
    ramp = nn.Conv2d(1, 1, 1, bias=False)
    ramp.weight.data.fill_(1.0)
    x = torch.arange(37 * 53, dtype=torch.float32).view(1, 1, 37, 53)
    assert torch.allclose(tiled_predict(ramp, x, (16, 16), 0.25, blend), x)


def test_an_image_smaller_than_the_tile_is_padded_and_cropped_back():
    model, x = nn.Conv2d(3, 2, 1), torch.randn(2, 3, 10, 30)
    out = tiled_predict(model, x, (16, 16), 0.25, "gaussian")
    assert out.shape == (2, 2, 10, 30) and torch.allclose(out, model(x), atol=1e-5)


def _tile_flags(*argv):
    parser = argparse.ArgumentParser()
    add_tile_arguments(parser)
    args = parser.parse_args(list(argv))
    check_tile_arguments(args)
    return args


def test_tile_flags_defaults_and_one_line_refusals():
    args = _tile_flags()
    assert (args.tile, args.overlap, args.tile_blend) == (None, 0.25, "gaussian")
    assert _tile_flags("--tile", "64", "32", "--overlap", "0", "--tile_blend", "linear").tile == [64, 32]
    for argv, flag in (
        (["--tile", "0", "16"], "--tile="),
        (["--overlap", "1"], "--overlap="),
        (["--overlap", "-0.1"], "--overlap="),
        (["--overlap", "nan"], "--overlap="),
        (["--tile_blend", "cosine"], "--tile_blend="),
    ):
        with pytest.raises(ConfigError) as info:
            _tile_flags(*argv)
        assert str(info.value).startswith(flag) and "\n" not in str(info.value)
