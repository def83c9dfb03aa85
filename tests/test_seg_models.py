"""Segmentation models: output shapes for odd and even sizes, UNet++ deep supervision in train and
eval mode, gradients, size checks, and the registry (no downloads)."""

import pytest
import torch
from torch import nn

from model.segmentation import MIN_INPUT_SIZE, SEG_MODELS, build_segmentation_model
from model.unet import UNet, UNetPlusPlus

SIZES = [(97, 131), (64, 96), (16, 16)]


def images(h, w, n=2, c=3, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def num_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
@pytest.mark.parametrize("size", SIZES)
def test_unet_keeps_input_size(upsample, size):
    model = UNet(3, 2, base_channels=4, upsample=upsample).eval()
    with torch.no_grad():
        out = model(images(*size))
    assert out.shape == (2, 2, *size) and out.dtype == torch.float32


@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_unet_plus_plus_shapes_in_train_and_eval(deep_supervision, size):
    model = UNetPlusPlus(3, 1, base_channels=4, deep_supervision=deep_supervision)
    x = images(*size)
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
    if deep_supervision:
        assert isinstance(train_out, list) and len(train_out) == 4
        assert all(t.shape == (2, 1, *size) for t in train_out)
    else:
        assert torch.is_tensor(train_out) and train_out.shape == (2, 1, *size)
    assert torch.is_tensor(eval_out) and eval_out.shape == (2, 1, *size)
    assert eval_out.dtype == torch.float32


def test_deep_supervision_eval_output_is_mean_of_the_four_heads():
    torch.manual_seed(0)
    model = UNetPlusPlus(3, 1, base_channels=4, deep_supervision=True).eval()
    x = images(33, 47)
    with torch.no_grad():
        heads = model.forward_heads(x)
        mean = model(x)
        model.training = True  # only the top module's flag: BN stays in eval mode
        as_list = model(x)
    assert len(heads) == 4 and not torch.allclose(heads[0], heads[3])
    torch.testing.assert_close(mean, torch.stack(heads).mean(dim=0))
    assert isinstance(as_list, list) and len(as_list) == 4
    for got, want in zip(as_list, heads):
        torch.testing.assert_close(got, want)


def test_without_deep_supervision_forward_heads_is_the_single_output():
    model = UNetPlusPlus(3, 1, base_channels=4).eval()
    x = images(20, 24)
    with torch.no_grad():
        heads, out = model.forward_heads(x), model(x)
    assert len(heads) == 1
    torch.testing.assert_close(out, heads[0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: UNet(3, 1, 4, "bilinear"),
        lambda: UNet(3, 1, 4, "transpose"),
        lambda: UNetPlusPlus(3, 1, 4),
        lambda: UNetPlusPlus(3, 1, 4, deep_supervision=True),
    ],
    ids=["unet-bilinear", "unet-transpose", "unetpp", "unetpp-deep"],
)
def test_every_parameter_gets_a_finite_nonzero_gradient(make):
    torch.manual_seed(0)
    model = make().train()
    x = images(35, 41)
    target = (torch.rand(2, 1, 35, 41, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    out = model(x)
    outs = out if isinstance(out, list) else [out]
    loss = sum(nn.functional.binary_cross_entropy_with_logits(o, target) for o in outs)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", [UNet, UNetPlusPlus])
def test_base_channels_scales_parameter_count(cls):
    small, large = num_params(cls(3, 1, 4)), num_params(cls(3, 1, 8))
    assert 3.0 < large / small < 4.5  # 3x3 convs dominate and grow with width squared


@pytest.mark.parametrize("cls", [UNet, UNetPlusPlus])
@pytest.mark.parametrize("size", [(15, 40), (40, 15)])
def test_too_small_input_raises_naming_the_size(cls, size):
    model = cls(3, 1, 4).eval()
    pattern = rf"at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}.*got {size[0]}x{size[1]}"
    with pytest.raises(ValueError, match=pattern):
        model(images(*size, n=1))


def test_unet_rejects_unknown_upsample():
    with pytest.raises(ValueError, match="nearest"):
        UNet(upsample="nearest")


def test_registry_names():
    assert set(SEG_MODELS) == {
        "UNet",
        "UNetPlusPlus",
        "fcn_resnet50",
        "deeplabv3_resnet50",
        "lraspp_mobilenet_v3_large",
    }


@pytest.mark.parametrize("name", sorted(SEG_MODELS))
def test_every_registered_model_maps_a_batch_to_one_logit_per_pixel(name, tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError(f"{name} tried to download weights")

    # An empty hub cache plus a failing downloader: pretrained weights cannot sneak in.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    torch.manual_seed(0)
    model = build_segmentation_model(name, base_channels=4).eval()
    with torch.no_grad():
        out = model(images(64, 96))
    assert torch.is_tensor(out) and out.shape == (2, 1, 64, 96) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not any(tmp_path.iterdir())


def test_registry_passes_options_to_the_unets():
    unet = build_segmentation_model("UNet", in_channels=1, base_channels=4, upsample="transpose")
    assert isinstance(unet, UNet) and unet.encoder.blocks[0][0].in_channels == 1
    assert any(isinstance(m, nn.ConvTranspose2d) for m in unet.modules())
    unetpp = build_segmentation_model("UNetPlusPlus", base_channels=4, deep_supervision=True)
    assert isinstance(unetpp, UNetPlusPlus) and len(unetpp.heads) == 4


def test_torchvision_models_need_three_channels():
    with pytest.raises(ValueError, match="in_channels=1"):
        build_segmentation_model("lraspp_mobilenet_v3_large", in_channels=1)


def test_unknown_name_raises_key_error_listing_choices():
    with pytest.raises(KeyError, match="SegFormer.*UNetPlusPlus"):
        build_segmentation_model("SegFormer")
