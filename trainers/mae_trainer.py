"""Self-supervised pretraining of a zoo ViT as a masked autoencoder (He et al. 2022); labels are not used."""

import torch

from base.config.checks import check
from base.config.parse import str2bool
from base.runtime import distributed
from model.mae import MAE
from model.zoo import VIT_MODELS
from trainers.vit_trainer import ViTTrainerBase
from utils.knn import knn_predict


class MAETrainer(ViTTrainerBase):
    """Pretrain the encoder of ``--model_type`` (a zoo ViT) by reconstructing hidden patches.

    Recipe (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"): 75% of the
    patches hidden per image, the encoder sees the rest, a light decoder predicts the pixels of
    every patch, the loss is the mean squared error on the hidden ones against per-patch
    normalised pixels; AdamW with weight decay 0.05, warmup then cosine; flips as augmentation.
    Validation reports the reconstruction ``loss`` and, with ``--knn_k``, the weighted k-NN top-1
    (:mod:`utils.knn`) of the encoder's features of the validation images against those of the
    (unaugmented) training images, which picks the best checkpoint. Fine-tune or linear-probe
    the encoder with ``trainer_vit.py --pretrained_path <checkpoint>``.

    It shares :class:`trainers.vit_trainer.ViTTrainerBase` with ``ViTTrainer``, but not the flags of
    supervised training and fine-tuning (``--label_smoothing``, ``--mixup_alpha``, ``--cutmix_alpha``,
    ``--mix_prob``, ``--layer_decay``, ``--linear_probe``): here they are unknown flags.
    """

    PROG = "trainer_mae.py"
    EVAL_SCRIPT = "eval_mae.py"
    DEFAULTS = {
        "proj_name": "MAE",
        "epochs": 100,
        "lr": 1.5e-3,
        "weight_decay": 0.05,
        "warmup_steps": 200,
        "grad_clip": 0.0,
        "hflip": 0.5,
        "vflip": 0.5,
    }
    RESUME_CHANGEABLE = ViTTrainerBase.RESUME_CHANGEABLE | {"knn_k", "knn_temperature", "num_viz"}
    #: Flags of ViTTrainer's that MAETrainer had while it derived from it, refused unless off: configs saved
    #: then hold them, with these values (None: any, it was unused). See :func:`base.config.parse.parse_config`.
    RETIRED_FLAGS = {
        "mixup_alpha": 0.0,
        "cutmix_alpha": 0.0,
        "linear_probe": False,
        "layer_decay": 1.0,
        "label_smoothing": None,
        "mix_prob": None,
    }

    @classmethod
    def add_arguments(cls, parser):
        group = parser.add_argument_group("masked autoencoder")
        group.add_argument("--mask_ratio", type=float, default=0.75, help="share of patches hidden per image")
        group.add_argument("--decoder_depth", type=int, default=2, help="decoder Transformer blocks")
        group.add_argument("--decoder_dim", type=int, default=128, help="decoder width (a multiple of 4)")
        group.add_argument("--decoder_heads", type=int, default=4, help="decoder attention heads")
        group.add_argument(
            "--norm_pix_loss",
            type=str2bool,
            nargs="?",
            const=True,
            default=True,
            help="predict each patch's pixels normalised to mean 0, variance 1 (the paper's best)",
        )
        group.add_argument(
            "--knn_k",
            type=int,
            default=20,
            help="neighbours of the validation k-NN accuracy on encoder features (0: off)",
        )
        group.add_argument("--knn_temperature", type=float, default=0.07, help="k-NN vote weight exp(sim / T)")
        group.add_argument(
            "--num_viz",
            type=int,
            default=4,
            help="validation images shown as image | masked | reconstruction in TensorBoard",
        )

    @classmethod
    def check_config(cls, args):
        super().check_config(args)
        # Its k-NN monitor votes with class indices; multi-label targets are 0/1 vectors.
        check(
            args.data_type != "ImageCSV",
            "data_type",
            args.data_type,
            "MAE pre-training reads single-label data (its k-NN monitor votes with class indices); pre-train on the "
            "images as an ImageFolder, then fine-tune with trainer_vit.py --data_type ImageCSV",
        )
        check(
            args.model_type in VIT_MODELS,
            "model_type",
            args.model_type,
            f"the MAE encoder must be a zoo ViT: {', '.join(VIT_MODELS)}",
        )
        check(0 < args.mask_ratio < 1, "mask_ratio", args.mask_ratio, "must be in (0, 1)")
        check(args.decoder_depth >= 1, "decoder_depth", args.decoder_depth, "must be >= 1")
        check(
            args.decoder_dim > 0 and args.decoder_dim % 4 == 0,
            "decoder_dim",
            args.decoder_dim,
            "must be a positive multiple of 4",
        )
        check(
            args.decoder_heads >= 1 and args.decoder_dim % args.decoder_heads == 0,
            "decoder_heads",
            args.decoder_heads,
            f"must divide --decoder_dim={args.decoder_dim}",
        )
        check(args.knn_k >= 0, "knn_k", args.knn_k, "must be >= 0")
        check(args.knn_temperature > 0, "knn_temperature", args.knn_temperature, "must be > 0")
        check(args.num_viz >= 0, "num_viz", args.num_viz, "must be >= 0")

    @classmethod
    def monitored(cls, args):
        """The k-NN top-1 (max) with ``--knn_k``, else the reconstruction loss (min)."""
        return ("knn_top1", "max") if args.knn_k else ("loss", "min")

    def build_datasets(self):
        sets = super().build_datasets()
        if self.args.knn_k:  # the k-NN bank: the training images without augmentation
            sets["knn"] = self.data.plain_train
        return sets

    @classmethod
    def model_for(cls, args, input_shape, num_classes):
        """The :class:`model.mae.MAE` around a fresh zoo ViT for images ``(C, H, W)``."""
        vit = super().model_for(args, input_shape, num_classes)
        return MAE(
            vit,
            args.in_chans or input_shape[0],
            args.mask_ratio,
            args.decoder_dim,
            args.decoder_depth,
            args.decoder_heads,
            args.norm_pix_loss,
        )

    def model_card(self):
        return {"trainer": type(self).__name__}

    def build_loss(self):
        """The MAE's own loss (:meth:`model.mae.MAE.loss`: mean squared error on the hidden patches)."""
        return self.raw_model.loss

    def train_step(self, batch):
        images = batch[0]  # labels are never used
        pred, mask = self.model(images)
        return {"loss": self.raw_model.loss(images, pred, mask)}

    def validate(self, model, loader):
        """Reconstruction ``loss`` (per image) and, with ``--knn_k``, ``knn_top1`` (%)."""
        mae, total, count, feats, labels = model, 0.0, 0, [], []
        for batch in loader:
            if batch is None:  # only unreadable images (--bad_images skip)
                continue
            images, targets = self.to_device(batch)
            with self.autocast():
                pred, mask = mae(images)
            total += float(mae.loss(images, pred, mask)) * len(images)
            count += len(images)
            if self.args.knn_k:
                feats.append(mae.features(images).float())
                labels.append(targets)
            if (
                count == len(images)
                and loader is self.loaders.get("val")
                and self.args.num_viz
                and self.tracking.trackers
            ):
                grid = self.reconstruction_grid(mae, images, pred, mask)
                self.log_image("val/image_masked_reconstruction", grid)
        metrics = {"loss": total / max(count, 1)}
        if self.args.knn_k:
            bank, bank_labels = self.feature_bank(
                mae
            )  # under DDP a collective: every process, even one without samples
            guess = (
                knn_predict(
                    torch.cat(feats),
                    bank,
                    bank_labels,
                    self.data.num_classes,
                    self.args.knn_k,
                    self.args.knn_temperature,
                )
                if feats
                else None
            )
            # (a process without samples counts 0 of them in the average over processes)
            metrics["knn_top1"] = 100.0 * float((guess == torch.cat(labels)).float().mean()) if feats else 0.0
        return metrics

    def feature_bank(self, model=None):
        """``model``'s (default: the model's) encoder features and labels of the whole training split
        (unaugmented): ``(M, D)``, ``(M,)``.

        Under DDP each process embeds its share and all of them are gathered, so every process
        votes against the same bank.
        """
        model, feats, labels = model or self.raw_model, [], []
        for batch in self.loaders["knn"]:
            if batch is None:
                continue
            images, targets = self.to_device(batch)
            with self.autocast():
                feats.append(model.features(images).float())
            labels.append(targets)
        mine = (torch.cat(feats).cpu(), torch.cat(labels).cpu()) if feats else (None, None)
        parts = [p for p in distributed.all_gather_object(mine) if p[0] is not None]
        return (torch.cat([f for f, _ in parts]).to(self.device), torch.cat([y for _, y in parts]).to(self.device))

    def reconstruction_grid(self, model, images, pred, mask):
        """``(3, H', W')`` in [0, 1], with ``model``: one row per image of the first ``--num_viz``: image |
        masked | reconstruction."""
        from torchvision.utils import make_grid  # here: only when a grid is drawn

        n = self.args.num_viz
        masked, pasted = model.reconstruct(images[:n], pred[:n].float(), mask[:n])
        tiles = torch.stack([images[:n].float(), masked, pasted], dim=1).flatten(0, 1)
        # Inputs are (x - mean) / std (base.loop.input_stage): back to [0, 1] pixels.
        mean = torch.tensor(self.inputs.mean, device=tiles.device).view(1, -1, 1, 1)
        std = torch.tensor(self.inputs.std, device=tiles.device).view(1, -1, 1, 1)
        return make_grid((tiles * std + mean).clamp(0, 1).cpu(), nrow=3, padding=1)
