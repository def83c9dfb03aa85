"""The image-classification zoo: output shapes for 1 and 3 channels, size and drop_path checks,
timm models, weight-decay exclusions and loading pretrained weights (random init, no downloads)."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from base.checkpoint.files import save_checkpoint
from base.errors import CheckpointError
from model.zoo import ZOO_MODELS, build_zoo_model, load_pretrained, no_weight_decay_names

# Small inputs keep the big models fast on a CPU: ViTs take exactly image_size, Swin any size >= 4.
SIZES = {"vit_ti_16": 32, "vit_s_16": 32, "vit_b_16": 32, "swin_t": 64, "resnet18": 32, "resnet50": 32}
TINY_VIT = {"image_size": 32, "patch_size": 8}


def images(size, c=3, n=2, seed=0):
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_every_name_has_a_size_here():
    assert set(SIZES) == set(ZOO_MODELS)


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", sorted(SIZES))
def test_maps_images_to_logits(name, in_chans):
    torch.manual_seed(0)
    model = build_zoo_model(name, num_classes=7, in_chans=in_chans, image_size=SIZES[name], patch_size=8)
    out = logits(model, images(SIZES[name], c=in_chans))
    assert out.shape == (2, 7) and out.dtype == torch.float32 and torch.isfinite(out).all()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == in_chans


def test_vit_widths_follow_deit():
    ti, s = build_zoo_model("vit_ti_16", 2, **TINY_VIT), build_zoo_model("vit_s_16", 2, **TINY_VIT)
    assert (ti.hidden_dim, ti.encoder.layers[0].self_attention.num_heads, len(ti.encoder.layers)) == (192, 3, 12)
    assert (s.hidden_dim, s.encoder.layers[0].self_attention.num_heads, s.mlp_dim) == (384, 6, 1536)
    assert ti.conv_proj.kernel_size == (8, 8)  # patch_size applies


def test_image_size_not_a_multiple_of_patch_size_is_refused():
    with pytest.raises(ValueError, match=r"image_size=30.*patch_size=8"):
        build_zoo_model("vit_ti_16", 2, image_size=30, patch_size=8)


def test_swin_is_refused_below_its_patch_size():
    with pytest.raises(ValueError, match="image_size=3"):
        build_zoo_model("swin_t", 2, image_size=3)


def test_drop_path_sets_swin_stochastic_depth_and_is_refused_elsewhere():
    model = build_zoo_model("swin_t", 2, image_size=64, drop_path=0.3)
    rates = [m.p for m in model.modules() if type(m).__name__ == "StochasticDepth"]
    assert rates and max(rates) == pytest.approx(0.3)  # torchvision ramps it linearly over the blocks
    assert all(m.p == 0 for m in build_zoo_model("swin_t", 2).modules() if type(m).__name__ == "StochasticDepth")
    for name in ("resnet18", "vit_ti_16"):
        with pytest.raises(ValueError, match=name):
            build_zoo_model(name, 2, drop_path=0.1, **TINY_VIT)


def test_resnet_dropout_wraps_the_head():
    model = build_zoo_model("resnet18", 4, dropout=0.5)
    assert isinstance(model.fc[0], nn.Dropout) and model.fc[0].p == 0.5 and model.fc[1].out_features == 4


def test_timm_model_with_one_channel():
    model = build_zoo_model("timm/test_vit", 5, in_chans=1, image_size=32, drop_path=0.1, dropout=0.2)
    assert logits(model, images(32, c=1)).shape == (2, 5)
    assert model.patch_embed.img_size == (32, 32) and model.patch_embed.proj.in_channels == 1
    assert model.head_drop.p == 0.2 and model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    convnet = build_zoo_model("timm/test_resnet", 3, in_chans=1, image_size=32)  # takes no img_size
    assert logits(convnet, images(32, c=1)).shape == (2, 3)


@pytest.mark.parametrize("name", ["vit_xx", "Vanilla"])
def test_unknown_names_raise_key_error_listing_the_choices(name):
    with pytest.raises(KeyError, match=rf"{name}.*choices: vit_ti_16, .*resnet50, or timm/<name>"):
        build_zoo_model(name, 2)


def test_unknown_timm_name_raises_key_error():
    with pytest.raises(KeyError, match="no_such_model"):
        build_zoo_model("timm/no_such_model", 2)


def test_no_weight_decay_names_of_a_vit():
    model = build_zoo_model("vit_ti_16", 2, **TINY_VIT)
    names = no_weight_decay_names(model)
    params = dict(model.named_parameters())
    assert {"class_token", "encoder.pos_embedding"} <= names
    assert {n for n in params if n.endswith(".bias")} <= names
    norms = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    assert len(norms) == 2 * 12 + 1 and norms <= names
    assert not {n for n in names if params[n].ndim >= 2} - {"class_token", "encoder.pos_embedding"}
    assert "conv_proj.weight" not in names and "heads.head.weight" not in names


def test_no_weight_decay_names_of_swin_and_timm():
    swin = no_weight_decay_names(build_zoo_model("swin_t", 2))
    assert "features.1.0.attn.relative_position_bias_table" in swin and "head.weight" not in swin
    timm_vit = no_weight_decay_names(build_zoo_model("timm/test_vit", 2, image_size=32))
    assert {"cls_token", "pos_embed"} <= timm_vit and "head.weight" not in timm_vit


def vit(num_classes=5, seed=0):
    torch.manual_seed(seed)
    return build_zoo_model("vit_ti_16", num_classes, **TINY_VIT)


def assert_same_weights(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    for key in sa:
        if key not in skip:
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def test_load_pretrained_round_trips_a_state_dict(tmp_path):
    source, target = vit(seed=0), vit(seed=1)
    assert not torch.equal(source.conv_proj.weight, target.conv_proj.weight)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    report = load_pretrained(target, tmp_path / "w.pth")
    assert (report.missing, report.unexpected, report.loaded) == ([], [], report.total)
    assert_same_weights(source, target)


@pytest.mark.parametrize("fmt", ["checkpoint", "safetensors"])
def test_load_pretrained_reads_checkpoints_and_safetensors(tmp_path, fmt):
    source, target = vit(seed=0), vit(seed=1)
    if fmt == "checkpoint":
        path = tmp_path / "run_best_ckpt.pth"
        save_checkpoint({"model": source.state_dict(), "epoch": 3}, str(path))
    else:
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    report = load_pretrained(target, path)
    assert (report.missing, report.unexpected, report.loaded) == ([], [], report.total)
    assert_same_weights(source, target)


def test_load_pretrained_reports_other_head_and_extra_keys_and_strips_prefixes(tmp_path):
    source, target = vit(num_classes=10, seed=0), vit(num_classes=5, seed=1)
    head_before = target.heads.head.weight.clone()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module._orig_mod.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "w.pth")
    report = load_pretrained(target, tmp_path / "w.pth")
    missing = report.missing
    assert missing == ["heads.head.bias", "heads.head.weight"] and report.unexpected == ["extra.weight"]
    assert report.mismatched == {"heads.head.weight": ((10, 192), (5, 192)), "heads.head.bias": ((10,), (5,))}
    torch.testing.assert_close(target.heads.head.weight, head_before)  # left as it was
    assert_same_weights(source, target, skip=set(missing))


def test_load_pretrained_errors_name_the_file(tmp_path):
    model = build_zoo_model("resnet18", 2)
    with pytest.raises(CheckpointError, match="nope.pth: no such file"):
        load_pretrained(model, tmp_path / "nope.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable"):
        load_pretrained(model, tmp_path / "junk.safetensors")
    torch.save({"lr": 0.1}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth: not a state dict"):
        load_pretrained(model, tmp_path / "other.pth")
