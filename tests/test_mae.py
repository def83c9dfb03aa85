"""MAETrainer and the path from its weights to a classifier: masking, the loss, loading into ViTTrainer,
linear probing, layer-wise LR decay, the k-NN monitor and the evaluator."""

import json
import logging
import os

import pytest
import torch

from base.checkpoint.files import load_checkpoint
from base.config.parse import parse_config
from evaluators.mae_evaluator import MAEEvaluator
from model.mae import MAE, patchify, random_masking, unpatchify
from model.zoo import build_zoo_model
from trainers.mae_trainer import MAETrainer
from trainers.vit_trainer import ViTTrainer
from utils.knn import knn_predict

# Digits: 8x8 images, 4x4 patches -> 4 patches an image; a vit_ti_16 encoder
DIGITS = ["--data_type", "Digits", "--patch_size", "4", "--batch_size", "64", "--gpu_devices", "cpu"]


def small_mae(mask_ratio=0.75, side=16, patch=4, channels=1, norm_pix_loss=True):
    vit = build_zoo_model("vit_ti_16", 3, in_chans=channels, image_size=side, patch_size=patch)
    return MAE(vit, channels, mask_ratio, decoder_dim=32, decoder_depth=1, decoder_heads=2, norm_pix_loss=norm_pix_loss)


@pytest.mark.parametrize("ratio, kept", [(0.75, 4), (0.5, 8), (0.9, 2), (0.6, 6)])  # of 16 patches
def test_masking_keeps_round_n_times_one_minus_ratio_patches_per_image_and_differs_per_image(ratio, kept):
    assert kept == round(16 * (1 - ratio))
    mae, seen = small_mae(ratio), []
    mae.encoder.layers.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    pred, mask = mae(torch.randn(8, 1, 16, 16))
    assert pred.shape == (8, 16, 16) and mask.shape == (8, 16)
    assert mask.sum(dim=1).tolist() == [16 - kept] * 8  # hidden patches, each image
    assert seen == [(8, 1 + kept, 192)]  # the encoder saw the class token and the kept patches only
    assert len({tuple(row.tolist()) for row in mask}) > 1  # not one mask for the whole batch
    ids_keep, ids_restore, mask = random_masking(16, kept, 3, "cpu")
    assert all(m[k].sum() == 0 for m, k in zip(mask, ids_keep))  # the kept ones are the unmasked ones


def test_the_loss_ignores_visible_patches_and_targets_are_normalised_per_patch():
    mae = small_mae()
    images = torch.randn(4, 1, 16, 16)
    pred, mask = mae(images)
    loss = mae.loss(images, pred, mask)
    visible, hidden = mask == 0, mask == 1
    changed = pred.clone()
    changed[visible] += 100.0  # any prediction on a visible patch
    assert mae.loss(images, changed, mask) == loss
    changed = pred.clone()
    changed[hidden] += 1.0
    assert mae.loss(images, changed, mask) > loss
    target = mae.targets(images)
    assert torch.allclose(target.mean(-1), torch.zeros(4, 16), atol=1e-5)
    assert torch.allclose(target.var(-1), torch.ones(4, 16), atol=1e-3)
    assert torch.equal(unpatchify(patchify(images, 4), 4, 1), images)
    # without norm_pix_loss the target is the pixels themselves
    assert torch.equal(small_mae(norm_pix_loss=False).targets(images), patchify(images, 4))


def test_the_loss_is_the_mean_over_hidden_patches_of_the_per_pixel_squared_error_by_hand():
    # 8x8 images, 4x4 patches: 4 patches of 16 pixels per image. Two hidden patches per image, fixed.
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    target = torch.randn(2, 4, 16)
    offset = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    pred = target + offset[..., None]  # each pixel of patch (n, l) off by offset[n, l]: squared error offset**2
    images = unpatchify(target, 4, 1)
    plain = small_mae(side=8, norm_pix_loss=False)
    # hidden: offsets 1, 3 (image 0) and 6, 7 (image 1); all patches would give 204 / 8, the visible 109 / 4
    torch.testing.assert_close(plain.loss(images, pred, mask), torch.tensor((1 + 9 + 36 + 49) / 4))
    # norm_pix_loss: each patch b + a * (+1 or -1, eight of each) has mean b and (unbiased, as in the paper's
    # code) variance a**2 * 16 / 15, so its target is the sign pattern times a / sqrt(a**2 * 16 / 15 + 1e-6)
    signs = torch.tensor([1.0, -1.0]).repeat(8)
    a, b = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 1.5, 2.0]]), torch.arange(8.0).view(2, 4)
    images = unpatchify(b[..., None] + a[..., None] * signs, 4, 1)
    normed = small_mae(side=8, norm_pix_loss=True)
    per_patch = a**2 / (a**2 * 16 / 15 + 1e-6)  # squared error of a zero prediction
    expected = (per_patch[0, 0] + per_patch[0, 2] + per_patch[1, 1] + per_patch[1, 2]) / 4
    torch.testing.assert_close(normed.loss(images, torch.zeros(2, 4, 16), mask), expected)


def mae_trainer(tmp_path, *argv):
    trainer = MAETrainer.from_argv(["--output_dir", str(tmp_path), *DIGITS, *argv])
    trainer.build()
    return trainer


def hidden_patch_loss(images, pred, mask):
    """The loss by hand: targets normalised per patch, squared error per pixel, mean over hidden patches."""
    target = patchify(images, 4)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    return ((pred - target) ** 2).mean(-1)[mask == 1].mean()


def test_train_step_and_validate_score_the_hidden_patches_of_the_models_own_mask(tmp_path):
    trainer = mae_trainer(tmp_path, "--knn_k", "0", "--num_viz", "0")
    seen = []
    trainer.model.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0], *output)))
    batch = trainer.to_device(next(iter(trainer.loaders["train"])))  # uint8 pixels -> the model's input
    loss = trainer.train_step(batch)["loss"]
    ((images, pred, mask),) = seen
    assert 0 < int(mask.sum()) < mask.numel()  # some patches hidden, some not: the average has to pick
    torch.testing.assert_close(loss, hidden_patch_loss(images, pred, mask))
    seen.clear()
    with torch.no_grad():
        metrics = trainer.validate(trainer.raw_model, [batch])
    ((images, pred, mask),) = seen
    assert metrics == {"loss": pytest.approx(float(hidden_patch_loss(images, pred, mask)), rel=1e-6)}


def test_knn_votes_by_weighted_neighbours():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    assert knn_predict(queries, bank, labels, 2, k=2).tolist() == [0, 1]
    assert knn_predict(queries, bank, labels, 2, k=99).tolist() == [0, 1]  # k capped at the bank, weights decide
    with pytest.raises(ValueError):
        knn_predict(queries, bank[:0], labels[:0], 2)


def test_knn_on_hand_made_banks_uses_cosine_similarity_k_and_the_temperature():
    q = torch.tensor([[1.0, 0.0]])
    # A long vector of class 1 (dot product 10, cosine 0.71) against a short one of class 0 (1, 0.995)
    assert knn_predict(q, torch.tensor([[1.0, 0.1], [10.0, 10.0]]), torch.tensor([0, 1]), 2, k=1).tolist() == [0]
    # One neighbour of class 0 at cosine 0.95, two of class 1 at cosine 0.9; each votes exp(cosine / T).
    side = [(1 - c * c) ** 0.5 for c in (0.95, 0.9)]
    bank, labels = torch.tensor([[0.95, side[0]], [0.9, side[1]], [0.9, -side[1]]]), torch.tensor([0, 1, 1])
    # T = 1: e^0.95 = 2.6 < 2 e^0.9 = 4.9, class 1 (the query's length 100 must not count: e^95 > 2 e^90);
    # k = 1: the nearest alone, class 0
    assert knn_predict(100 * q, bank, labels, 2, k=3, temperature=1.0).tolist() == [1]
    assert knn_predict(100 * q, bank, labels, 2, k=1, temperature=1.0).tolist() == [0]
    # T = 0.05: e^19 > 2 e^18, class 0 (without the temperature, or multiplied by it, class 1)
    assert knn_predict(q, bank, labels, 2, k=3, temperature=0.05).tolist() == [0]
    # queries compared a chunk at a time give what they give one by one
    queries = torch.tensor([[1.0, 0.0], [0.95, 0.3], [0.9, -0.5]])
    one_by_one = [int(knn_predict(x[None], bank, labels, 2, k=2, temperature=0.1)) for x in queries]
    assert knn_predict(queries, bank, labels, 2, k=2, temperature=0.1, chunk=2).tolist() == one_by_one


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("mae")
    trainer = MAETrainer.from_argv(["--output_dir", str(out), *DIGITS, "--epochs", "1", "--knn_k", "5"])
    metrics = trainer.fit()
    return trainer, metrics


def test_mae_trains_without_labels_and_reports_loss_and_knn(pretrained):
    trainer, metrics = pretrained
    assert set(metrics) == {"loss", "knn_top1"} and trainer.monitor == "knn_top1"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(trainer.run_dir, "summary")).Reload()
    (image,) = events.Images("val/image_masked_reconstruction")[:1]
    assert image.width > 3 * 8 and image.height > 4 * 8  # 4 rows of image | masked | reconstruction


def embed(mae, dataset, inputs, batch_size=64):
    """Encoder features and labels of ``dataset``, in order, in the trainer's batches normalised by its input
    stage ``inputs`` (the same floats)."""
    feats, labels = [], []
    for images, targets in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        feats.append(mae.features(inputs.to_device(images)))
        labels.append(targets)
    return torch.cat(feats), torch.cat(labels)


@pytest.fixture(scope="module")
def best_features(pretrained):
    """Features and labels of the training split (the bank) and of the test split, by the best checkpoint."""
    trainer, _ = pretrained
    mae = MAETrainer.model_for(trainer.args, trainer.data.input_shape, trainer.data.num_classes)
    mae.load_state_dict(load_checkpoint(trainer.checkpointer.path("best"))["model"])
    with torch.no_grad():
        # the bank: the training images as evaluation reads them (no random op), as the trainer's k-NN split
        return (
            *embed(mae.eval(), trainer.data.plain_train, trainer.inputs),
            *embed(mae, trainer.data.test, trainer.inputs),
        )


def test_test_knn_top1_is_that_of_the_best_checkpoint_against_the_training_images(pretrained, best_features):
    (trainer, metrics), (bank, bank_labels, queries, truth) = pretrained, best_features
    guess = knn_predict(queries, bank, bank_labels, 10, trainer.args.knn_k, trainer.args.knn_temperature)
    hits = int((guess == truth).sum())
    assert metrics["knn_top1"] == pytest.approx(100.0 * hits / len(truth), abs=1e-4)  # one sample: 0.28 points
    assert hits > 0.3 * len(truth)  # encoder features of digits: well above chance (10%)


def test_the_feature_bank_is_every_process_part_in_rank_order(pretrained, best_features, monkeypatch):
    # Under DDP each process embeds its shard of the training split: the bank must hold all of them.
    from base.runtime import distributed

    (trainer, _), (mine, mine_labels, _, _) = pretrained, best_features
    other = (torch.randn(3, mine.shape[1]), torch.tensor([7, 8, 9]))
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj: [obj, other, (None, None)])
    with torch.no_grad():  # the trainer's model holds the best weights since its test
        bank, labels = trainer.feature_bank()
    torch.testing.assert_close(bank, torch.cat([mine, other[0]]), rtol=0, atol=0)
    assert labels.tolist() == mine_labels.tolist() + [7, 8, 9]


def test_an_mae_checkpoint_loads_into_vit_trainer_with_only_the_decoder_unexpected(pretrained, tmp_path, caplog):
    mae_trainer, _ = pretrained
    ckpt = mae_trainer.checkpointer.path("best")
    vit = ViTTrainer.from_argv(["--output_dir", str(tmp_path), *DIGITS, "--pretrained_path", ckpt])
    with caplog.at_level(logging.INFO, logger="model.pretrained"):
        vit.build()
    lines = [r.getMessage() for r in caplog.records if r.name == "model.pretrained"]
    saved = load_checkpoint(ckpt)["model"]
    decoder = sorted(k for k in saved if k.startswith("decoder."))
    missing = "2 keys missing (left as initialised): heads.head.bias, heads.head.weight"
    assert f"--pretrained_path {ckpt}: {missing}" in lines
    assert f"--pretrained_path {ckpt}: {len(decoder)} keys unexpected (ignored): {', '.join(decoder)}" in lines
    for key, value in vit.model.state_dict().items():
        if not key.startswith("heads."):
            assert torch.equal(value, saved[key]), key


def test_linear_probe_leaves_every_encoder_tensor_bit_identical(pretrained, tmp_path):
    ckpt = pretrained[0].checkpointer.path("best")
    probe = ViTTrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path),
            *DIGITS,
            "--pretrained_path",
            ckpt,
            "--linear_probe",
            "--epochs",
            "1",
            "--lr",
            "0.05",
            "--weight_decay",
            "0.05",
        ]
    )
    metrics = probe.fit()
    saved = load_checkpoint(ckpt)["model"]
    trained = load_checkpoint(probe.checkpointer.path("last"))["model"]
    encoder = [k for k in trained if not k.startswith("heads.")]
    assert encoder and all(torch.equal(trained[k], saved[k]) for k in encoder)
    assert {k for k in trained if k.startswith("heads.")} == {
        "heads.norm.running_mean",
        "heads.norm.running_var",
        "heads.norm.num_batches_tracked",
        "heads.head.weight",
        "heads.head.bias",
    }  # BatchNorm without affine parameters, then the linear layer
    assert metrics["top1"] > 30  # a linear classifier on pretrained features, 10 classes


def test_layer_decay_gives_each_block_its_documented_lr(tmp_path):
    trainer = ViTTrainer.from_argv(["--output_dir", str(tmp_path), *DIGITS, "--layer_decay", "0.5", "--lr", "0.01"])
    trainer.build()
    trainer.optimizer = trainer.build_optimizer()
    lr_of = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    names = dict(trainer.model.named_parameters())
    expected = {
        "conv_proj.weight": 0.01 * 0.5**13,
        "class_token": 0.01 * 0.5**13,
        "encoder.pos_embedding": 0.01 * 0.5**13,
        "encoder.layers.encoder_layer_0.mlp.0.weight": 0.01 * 0.5**12,
        "encoder.layers.encoder_layer_5.ln_1.weight": 0.01 * 0.5**7,
        "encoder.layers.encoder_layer_11.self_attention.in_proj_weight": 0.01 * 0.5,
        "encoder.ln.weight": 0.01,
        "heads.head.weight": 0.01,
    }
    for name, lr in expected.items():
        assert lr_of[id(names[name])] == pytest.approx(lr, rel=1e-12), name
    assert trainer.optimizer.param_groups[0]["lr"] == 0.01  # the head's: what the log reports
    no_decay = {g["layer"] for g in trainer.optimizer.param_groups if g.get("weight_decay") == 0.0}
    assert no_decay == set(range(14))  # biases and norms of every layer stay out of weight decay


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model_type", "resnet18"], "--model_type='resnet18': the MAE encoder must be a zoo ViT"),
        (["--mask_ratio", "1"], "--mask_ratio=1.0: must be in (0, 1)"),
        (["--mixup_alpha", "0.2"], "unrecognized arguments: --mixup_alpha 0.2"),  # a supervised flag: not MAE's
        (["--decoder_dim", "30"], "--decoder_dim=30: must be a positive multiple of 4"),
    ],
)
def test_bad_mae_flags_name_the_flag(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        MAETrainer.from_argv(["--output_dir", str(tmp_path), *DIGITS, *argv])
    assert message in capsys.readouterr().err


SUPERVISED = {"mixup_alpha": "0.2", "cutmix_alpha": "1", "mix_prob": "0.5", "label_smoothing": "0.1"}
SUPERVISED |= {"layer_decay": "0.75", "linear_probe": "true"}


@pytest.mark.parametrize("flag, value", SUPERVISED.items())
def test_mae_has_none_of_the_supervised_flags_of_vit(tmp_path, capsys, flag, value):
    # ViTTrainer's recipe and fine-tuning flags: an unknown flag of trainer_mae.py (exit 2, one line naming it)
    with pytest.raises(SystemExit) as exc:
        MAETrainer.from_argv(["--output_dir", str(tmp_path), *DIGITS, f"--{flag}", value])
    assert exc.value.code == 2
    assert f"trainer_mae.py: error: unrecognized arguments: --{flag} {value}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        MAETrainer.from_argv(["--help"])
    assert exc.value.code == 0
    shown = capsys.readouterr().out
    assert f"--{flag}" not in shown and "--mask_ratio" in shown and "--hflip" in shown
    assert ViTTrainer.from_argv(["--output_dir", str(tmp_path), *DIGITS, f"--{flag}", value])  # ViT's own


def test_a_config_saved_when_mae_had_the_supervised_flags_reads_as_before(tmp_path, capsys):
    # MAETrainer derived from ViTTrainer: its saved configs hold those flags, off (RETIRED_FLAGS)
    old = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_prob": 1.0, "label_smoothing": 0.0}
    old |= {"layer_decay": 1.0, "linear_probe": False, "mask_ratio": 0.5}
    path = tmp_path / "config_old.json"
    path.write_text(json.dumps({"config": old}))
    trainer = MAETrainer.from_argv(["--output_dir", str(tmp_path), *DIGITS, "--config", str(path)])
    assert trainer.args.mask_ratio == 0.5 and "mixup_alpha" not in vars(trainer.args)
    yaml = tmp_path / "config_old.yaml"  # as --print_config wrote it
    yaml.write_text("mixup_alpha: 0.0\nlayer_decay: 1\nlinear_probe: false\nlabel_smoothing: 0.1\nmask_ratio: 0.5\n")
    assert MAETrainer.from_argv(["--output_dir", str(tmp_path), *DIGITS, "--config", str(yaml)]).args.mask_ratio == 0.5
    resumed, provenance = parse_config(MAETrainer, ["--output_dir", str(tmp_path), *DIGITS], base_values=old)
    assert resumed.mask_ratio == 0.5 and "layer_decay" not in provenance  # --resume of such a run
    path.write_text(json.dumps({"config": {**old, "mixup_alpha": 0.2}}))  # refused then; still refused
    with pytest.raises(SystemExit) as exc:
        MAETrainer.from_argv(["--output_dir", str(tmp_path), *DIGITS, "--config", str(path)])
    assert exc.value.code == 2
    assert "mixup_alpha=0.2: trainer_mae.py has no --mixup_alpha" in capsys.readouterr().err


def test_layer_decay_and_linear_probe_need_a_vit(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ViTTrainer.from_argv(["--output_dir", str(tmp_path), *DIGITS, "--model_type", "resnet18", "--linear_probe"])
    assert "--linear_probe=True: needs a zoo ViT" in capsys.readouterr().err


def test_evaluator_from_the_checkpoint_alone_reports_knn_and_draws_reconstructions(pretrained, capsys):
    trainer, metrics = pretrained
    results = MAEEvaluator.from_argv(
        ["--model_path", trainer.checkpointer.path("best"), "--viz", "--gpu_devices", "cpu"]
    ).run()
    assert results["knn_top1"] == pytest.approx(metrics["knn_top1"], rel=1e-9)  # features need no random mask
    assert os.path.getsize(results["figure"]) > 1000
    saved = json.load(open(os.path.splitext(trainer.checkpointer.path("best"))[0] + "_eval_test.json"))
    assert saved["knn_top1"] == results["knn_top1"]


def test_a_process_without_validation_samples_still_joins_the_feature_bank(pretrained, monkeypatch):
    # Under DDP the bank is gathered from every process: one whose shard of a small split is empty must
    # still take part (else the others wait for it forever), and report 0 samples' worth of k-NN.
    trainer, _ = pretrained
    calls = []
    original = trainer.feature_bank
    monkeypatch.setattr(trainer, "feature_bank", lambda *model: calls.append(1) or original(*model))
    with torch.no_grad():
        metrics = trainer.validate(trainer.raw_model, [])
    assert calls == [1] and metrics == {"loss": 0.0, "knn_top1": 0.0}
