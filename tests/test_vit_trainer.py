"""ViTTrainer: the recipe's parts (no-decay groups, schedule, Mixup/CutMix, RandAugment) and a run on ELPV."""

import math

import pytest
import torch

from base.loop.optim import WarmupCosine
from by_hand import top1_by_hand
from data.augment import Augmented
from evaluators.vit_evaluator import ViTEvaluator
from trainers.vit_trainer import ViTTrainer

QUICK = [
    "--data_type",
    "ELPV",
    "--image_size",
    "16",
    "--patch_size",
    "8",
    "--train_val_sample_rate",
    "0.1",
    "--test_sample_rate",
    "0.2",
    "--batch_size",
    "32",
    "--gpu_devices",
    "cpu",
]


def built(tmp_path, *argv):
    trainer = ViTTrainer.from_argv(["--output_dir", str(tmp_path), *QUICK, *argv])
    trainer.build()
    trainer.optimizer = trainer.build_optimizer()
    return trainer


def test_no_weight_decay_on_biases_norms_position_embedding_and_class_token(tmp_path):
    trainer = built(tmp_path)
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"class_token", "encoder.pos_embedding"} <= skipped
    assert all(p.ndim >= 2 for p in decay["params"])  # only matrices and kernels decay
    assert all(names[id(p)] in skipped for p in trainer.model.parameters() if p.ndim == 1)


def test_schedule_peaks_at_the_end_of_warmup_and_ends_at_zero():
    schedule = WarmupCosine(warmup=10, total=110)
    assert schedule(0) == pytest.approx(1e-3) and schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.5) and schedule(110) == pytest.approx(0.0, abs=1e-12)
    assert all(schedule(s) >= schedule(s + 1) for s in range(10, 110))
    assert schedule(5) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert math.isclose(schedule(200), 0.0, abs_tol=1e-12)


def test_mixup_and_cutmix_targets_are_probabilities(tmp_path):
    trainer = built(tmp_path, "--mixup_alpha", "0.4", "--cutmix_alpha", "1.0")
    images, labels = trainer.to_device(next(iter(trainer.loaders["train"])))
    torch.manual_seed(0)
    mixed_images, targets = trainer.inputs.mix(images, labels)
    assert targets.shape == (len(labels), trainer.data.num_classes)
    assert torch.allclose(targets.sum(1), torch.ones(len(labels)))
    assert (targets.max(1).values < 1).any()  # really mixed, not one-hot
    assert not torch.equal(mixed_images, images)


@pytest.mark.parametrize("mix", [["--mixup_alpha", "0.4"], ["--cutmix_alpha", "1.0"]], ids=["mixup", "cutmix"])
def test_train_step_scores_the_mixed_images_against_the_mixed_soft_targets(tmp_path, mix):
    trainer = built(tmp_path, *mix, "--label_smoothing", "0.1")
    torch.nn.init.normal_(trainer.model.heads.head.weight, std=0.1)  # (zeros at first: every target would score log K)
    mixes, mix_of = [], trainer.inputs.mix
    trainer.inputs.mix = lambda images, labels: mixes.append(mix_of(images, labels)) or mixes[-1]
    batch = next(iter(trainer.loaders["train"]))
    images, labels = trainer.to_device(batch)
    torch.manual_seed(0)
    loss = trainer.train_step(trainer.inputs.train_input(batch))["loss"]  # as the loop calls it
    ((mixed, soft),) = mixes
    assert not torch.equal(mixed, images) and (soft.max(1).values < 1).any()  # really mixed
    # Cross-entropy against the soft targets by hand, smoothed as torch does: (1 - e) * soft + e / K
    with torch.no_grad():
        log_p = trainer.model(mixed).log_softmax(1)
        expected = -((0.9 * soft + 0.1 / soft.shape[1]) * log_p).sum(1).mean()
        hard = -((0.9 * torch.nn.functional.one_hot(labels, soft.shape[1]) + 0.1 / soft.shape[1]) * log_p).sum(1)
    assert float((expected - hard.mean()).abs()) > 1e-3  # the hard labels would give another loss
    torch.testing.assert_close(loss.detach(), expected)


def test_flips_flip_training_images(tmp_path):
    trainer = built(tmp_path, "--hflip", "1", "--vflip", "1")
    flipped, label = trainer.datasets["train"][0]
    plain, plain_label = trainer.data.plain_train[0]
    assert label == plain_label
    torch.testing.assert_close(flipped, plain.flip(-1).flip(-2))


def test_randaugment_changes_training_images_only(tmp_path):
    trainer = built(tmp_path, "--randaugment", "2", "15")
    assert isinstance(trainer.datasets["train"], Augmented)
    assert not isinstance(trainer.datasets["val"], Augmented)
    torch.manual_seed(0)
    a, _ = trainer.datasets["train"][0]
    b, _ = trainer.datasets["train"][0]
    plain, _ = trainer.data.plain_train[0]
    assert a.dtype == torch.uint8 and not (torch.equal(a, plain) and torch.equal(b, plain))
    # RandAugment(N=2, M=15) of the uint8 image, with the same random draws
    from torchvision.transforms import v2

    torch.manual_seed(0)
    torch.testing.assert_close(a, v2.RandAugment(num_ops=2, magnitude=15)(plain))


def test_a_short_run_with_the_whole_recipe_then_eval(tmp_path, capsys):
    trainer = ViTTrainer.from_argv(
        [
            "--output_dir",
            str(tmp_path),
            *QUICK,
            "--max_steps",
            "6",
            "--mixup_alpha",
            "0.2",
            "--cutmix_alpha",
            "1.0",
            "--randaugment",
            "2",
            "9",
            "--warmup_steps",
            "2",
            "--num_workers",
            "2",
        ]
    )
    metrics = trainer.fit()
    assert trainer.global_step == 6 and metrics["top1"] == pytest.approx(top1_by_hand(trainer), abs=1e-9)
    results = ViTEvaluator.from_argv(["--model_path", trainer.checkpointer.path("best")]).run()
    assert results["top1"] == pytest.approx(metrics["top1"])
    assert set(results["per_class_top1"]) == set(trainer.data.class_names)
    assert "per-class top-1" in capsys.readouterr().out
