"""Image classification with the model zoo and the "How to train your ViT" recipe."""

from collections import OrderedDict

from torch import nn

from base.config.checks import check
from base.config.parse import path_arg, str2bool
from base.loop import optim
from base.trainer import TrainerBase
from data.classification import (
    add_data_arguments,
    build_classification_datasets,
    check_data_config,
    data_channels,
    default_statistics,
    image_side,
)
from data.transforms import augment_ops
from model.hub import load_published_weights
from model.pretrained import load_pretrained
from model.zoo import (
    VIT_MODELS,
    build_zoo_model,
    image_size_problem,
    no_weight_decay_names,
    vit_layer_id,
    vit_num_layers,
)
from trainers import multilabel
from trainers.classification import (
    add_imbalance_flags,
    check_data_on_device,
    check_imbalance_flags,
    classification_loss,
    classification_sample_weights,
    classifier_model_card,
    device_augment,
    imbalance_defaults,
    training_split,
    validate_classifier,
)
from trainers.fine_tuning import FreezeBody, add_fine_tuning_arguments, check_fine_tuning_config, fine_tuning_defaults


class ViTTrainerBase(TrainerBase):
    """What :class:`ViTTrainer` and :class:`trainers.mae_trainer.MAETrainer` share: a zoo model and its data.

    The flags of the model (``--model_type``, ``--patch_size``, ``--drop_path``, ``--dropout``,
    ``--in_chans``, ``--pretrained_path``), of the training images' random ops (``--randaugment``,
    ``--hflip``, ``--vflip``) and of the classification data; the datasets, the device augmentation
    of ``--data_on_device``, the model (loaded from ``--pretrained_path``) and AdamW without weight
    decay on biases, norms, position embeddings and class tokens. A subclass adds its objective:
    ``build_loss``, ``train_step``, ``validate`` (and its own flags).
    """

    INIT_ONLY_FLAGS = ("pretrained_path",)
    DEFAULTS = {"data_type": "ELPV", "image_size": 64, "batch_size": 64}
    OLDER_RUN_VALUES = {**TrainerBase.OLDER_RUN_VALUES, "train_crop": "squash"}  # images were squashed then
    default_statistics = classmethod(lambda cls, args: default_statistics(args))

    @classmethod
    def add_arguments(cls, parser):
        model = parser.add_argument_group("model")
        model.add_argument(
            "--model_type",
            default="vit_ti_16",
            help="vit_ti_16, vit_s_16, vit_b_16, swin_t, resnet18, resnet50, or timm/<name>",
        )
        model.add_argument("--patch_size", type=int, default=8, help="ViT patch side (pixels)")
        model.add_argument("--drop_path", type=float, default=0.0, help="stochastic depth rate (Swin, timm)")
        model.add_argument("--dropout", type=float, default=0.0, help="dropout rate")
        model.add_argument("--in_chans", type=int, default=0, help="input channels (0: the data's)")
        model.add_argument(
            "--pretrained_path",
            type=path_arg,
            default=None,
            help="start from this state dict (ours, an MAE checkpoint of trainer_mae.py, or yours)",
        )
        recipe = parser.add_argument_group("recipe")
        recipe.add_argument(
            "--randaugment",
            type=int,
            nargs=2,
            default=None,
            metavar=("N", "M"),
            help="RandAugment: N ops of magnitude M (0-30) on training images",
        )
        recipe.add_argument("--hflip", type=float, default=0.0, help="probability of a horizontal flip")
        recipe.add_argument("--vflip", type=float, default=0.0, help="probability of a vertical flip")
        add_data_arguments(parser)

    @classmethod
    def check_config(cls, args):
        super().check_config(args)
        check_data_on_device(args)
        # kornia's RandAugment draws one choice of ops for a whole batch; the worker path draws per image.
        check(
            not (args.data_on_device and args.randaugment),
            "randaugment",
            args.randaugment,
            "not with --data_on_device (kornia's RandAugment picks its ops once per batch, the DataLoader path "
            "per image): leave one of them off",
        )
        check_data_config(args)
        for flag in ("drop_path", "dropout", "hflip", "vflip"):
            check(0 <= getattr(args, flag) <= 1, flag, getattr(args, flag), "must be in [0, 1]")
        check(args.in_chans >= 0, "in_chans", args.in_chans, "must be >= 0")
        check(args.patch_size > 0, "patch_size", args.patch_size, "must be > 0")
        check_in_chans(args, data_channels(args.data_type), f"--data_type {args.data_type}")
        if args.randaugment is not None:
            check(
                args.randaugment[0] >= 0 and 0 <= args.randaugment[1] <= 30,
                "randaugment",
                args.randaugment,
                "N must be >= 0 and M in 0..30",
            )
        flag, value, side = image_side(args)
        problem = image_size_problem(args.model_type, side, args.patch_size)
        check(problem is None, flag, value, problem)

    def build_datasets(self):
        a = self.args
        self.data = build_classification_datasets(a, augment_ops(a.hflip, a.vflip, a.randaugment))
        return {"train": training_split(self.data, a), "val": self.data.val, "test": self.data.test}

    def build_device_augment(self):
        """With ``--data_on_device``: the crop of ``--train_crop rrc`` and ``--hflip`` / ``--vflip`` on the device."""
        a = self.args
        return device_augment(a, self.data.input_shape[-1], a.hflip, a.vflip) if a.data_on_device else None

    def build_model(self):
        """:meth:`model_for` the data, with the tensors of ``--pretrained_path`` when given."""
        a = self.args
        model = self.model_for(a, self.data.input_shape, self.data.num_classes)
        if a.pretrained_path:
            load_pretrained(model, a.pretrained_path)  # adapts, logs to the run log, refuses a file that fits nothing
        return model

    @classmethod
    def model_for(cls, args, input_shape, num_classes):
        """The randomly initialised zoo model of ``args`` for images ``(C, H, W)`` and ``num_classes``; needs no data.

        Raises:
            KeyError, ValueError: see :func:`model.zoo.build_zoo_model`.
        """
        check_in_chans(args, input_shape[0], "the data")  # a task's own data, which --data_type does not describe
        return build_zoo_model(
            args.model_type,
            num_classes,
            in_chans=args.in_chans or input_shape[0],
            image_size=input_shape[-1],
            patch_size=args.patch_size,
            drop_path=args.drop_path,
            dropout=args.dropout,
        )

    def build_optimizer(self):
        """AdamW (or ``--optimizer``) with weight decay off for :func:`model.zoo.no_weight_decay_names`."""
        return optim.build_optimizer(
            optim.decay_groups(self.raw_model, no_weight_decay_names(self.raw_model)), self.args
        )


class ViTTrainer(ViTTrainerBase):
    """Train a zoo classifier (ViT, Swin, ResNet, any timm model); the best checkpoint has the highest top-1.

    Recipe (Steiner et al. 2021, "How to train your ViT?"; torchvision's classification
    reference): AdamW with no weight decay on biases, norms, position embeddings
    and class tokens; linear warmup then cosine per step; Mixup / CutMix per batch;
    RandAugment; label smoothing; gradient clipping at norm 1.

    Fine-tuning (:mod:`trainers.fine_tuning`): ``--pretrained`` starts from the model's published weights,
    whose input statistics become the defaults; ``--freeze_epochs`` trains the head alone first.

    With ``--data_on_device`` the crop and flips run on the device per sample (kornia, see
    :func:`trainers.vanilla_trainer.device_augment`); ``--randaugment`` is refused there: kornia's
    RandAugment picks its ops once per batch, not per image.
    """

    PROG = "trainer_vit.py"
    EVAL_SCRIPT = "eval_vit.py"
    INIT_ONLY_FLAGS = (*ViTTrainerBase.INIT_ONLY_FLAGS, "pretrained")
    DEFAULTS = {
        "proj_name": "ViT",
        "epochs": 30,
        "lr": 1e-3,
        "weight_decay": 0.05,
        "warmup_steps": 100,
        "grad_clip": 1.0,
    }
    monitor, monitor_mode = "top1", "max"
    monitored = classmethod(lambda cls, args: multilabel.monitored(args))

    @classmethod
    def add_arguments(cls, parser):
        # Beside the base's flags of the same groups in --help.
        model, recipe = argument_group(parser, "model"), argument_group(parser, "recipe")
        model.add_argument(
            "--layer_decay",
            type=float,
            default=1.0,
            help="vit_*: layer-wise LR decay; block i of L trains at lr * layer_decay^(L+1-i) "
            "(MAE fine-tuning: 0.65-0.75; 1: off)",
        )
        model.add_argument(
            "--linear_probe",
            type=str2bool,
            nargs="?",
            const=True,
            default=False,
            help="vit_*: freeze the encoder, train a BatchNorm (no affine) + linear head only",
        )
        add_fine_tuning_arguments(model, recipe)
        recipe.add_argument("--label_smoothing", type=float, default=0.1, help="cross-entropy label smoothing")
        recipe.add_argument("--mixup_alpha", type=float, default=0.0, help="Mixup Beta(alpha, alpha); 0: off")
        recipe.add_argument("--cutmix_alpha", type=float, default=0.0, help="CutMix Beta(alpha, alpha); 0: off")
        recipe.add_argument("--mix_prob", type=float, default=1.0, help="share of batches mixed")
        add_imbalance_flags(parser)
        multilabel.add_multilabel_arguments(parser)

    @classmethod
    def check_config(cls, args):
        super().check_config(args)
        for flag in ("label_smoothing", "mix_prob"):
            check(0 <= getattr(args, flag) <= 1, flag, getattr(args, flag), "must be in [0, 1]")
        for flag in ("mixup_alpha", "cutmix_alpha"):
            check(getattr(args, flag) >= 0, flag, getattr(args, flag), "must be >= 0")
        check(0 < args.layer_decay <= 1, "layer_decay", args.layer_decay, "must be in (0, 1] (1: off)")
        for flag, on in (("layer_decay", args.layer_decay < 1), ("linear_probe", args.linear_probe)):
            check(
                not on or args.model_type in VIT_MODELS,
                flag,
                getattr(args, flag),
                f"needs a zoo ViT ({', '.join(VIT_MODELS)}), not --model_type {args.model_type}",
            )
        check_fine_tuning_config(args)
        check_imbalance_flags(args)
        multilabel.check_multilabel_config(args)

    @classmethod
    def derived_defaults(cls, args):
        """With ``--pretrained``, the input statistics, image size and ``--lr`` of fine-tuning
        (:func:`trainers.fine_tuning.fine_tuning_defaults`); with ``--loss focal`` or multi-label data, no label
        smoothing (:func:`trainers.multilabel.multilabel_defaults`)."""
        return {
            **super().derived_defaults(args),
            **fine_tuning_defaults(args),
            **imbalance_defaults(args),
            **multilabel.multilabel_defaults(args),
        }

    def build_mix(self):
        """Mixup / CutMix per batch on the device (torchvision v2); targets become class probabilities."""
        from torchvision.transforms import v2  # here, not at import: --help should not pay for torchvision

        a = self.args
        mixes = [v2.MixUp(alpha=a.mixup_alpha, num_classes=self.data.num_classes)] if a.mixup_alpha else []
        mixes += [v2.CutMix(alpha=a.cutmix_alpha, num_classes=self.data.num_classes)] if a.cutmix_alpha else []
        return v2.RandomApply([v2.RandomChoice(mixes)], p=a.mix_prob) if mixes else None

    def build_model(self):
        """The base's model, with ``--pretrained`` its published weights (:func:`model.hub.load_published_weights`;
        not read on ``--resume``, whose checkpoint replaces them); with ``--linear_probe`` only its head learns
        (the encoder's tensors stay as loaded)."""
        model = super().build_model()
        if self.args.pretrained and not self.resume_from:
            load_published_weights(model, self.args.model_type)  # adapts, logs to the run log, one-line errors
        if self.args.linear_probe:
            for name, param in model.named_parameters():
                param.requires_grad = name.startswith("heads.")
        return model

    @classmethod
    def model_for(cls, args, input_shape, num_classes):
        """The base's zoo model; with ``--linear_probe`` its head is :func:`linear_probe_head`."""
        model = super().model_for(args, input_shape, num_classes)
        if getattr(args, "linear_probe", False):
            model.heads = linear_probe_head(model.hidden_dim, num_classes)
        return model

    def model_card(self):
        return classifier_model_card(self)

    def build_hooks(self):
        """With ``--freeze_epochs``, :class:`trainers.fine_tuning.FreezeBody`."""
        return [*super().build_hooks(), *([FreezeBody(self.args.freeze_epochs)] if self.args.freeze_epochs else [])]

    def build_loss(self):
        return classification_loss(self)

    def sample_weights(self):
        return classification_sample_weights(self.data)

    def build_optimizer(self):
        """The base's optimizer; with ``--layer_decay`` < 1, one group per layer
        (:func:`base.loop.optim.layer_decay_groups`)."""
        a = self.args
        if a.layer_decay < 1:
            layers = vit_num_layers(a.model_type)
            groups = optim.layer_decay_groups(
                self.raw_model,
                no_weight_decay_names(self.raw_model),
                lambda name: vit_layer_id(name, layers),
                layers,
                a.lr,
                a.layer_decay,
            )
            return optim.build_optimizer(groups, a)
        return super().build_optimizer()

    def train_step(self, batch):
        images, labels = batch  # mixed already with --mixup_alpha / --cutmix_alpha (build_mix)
        return {"loss": self.loss_fn(self.model(images), labels)}

    def validate(self, model, loader):
        return validate_classifier(self, model, loader)


def argument_group(parser, title):
    """``parser``'s argument group titled ``title``, made if it has none (a subclass's flags join its base's)."""
    return next((g for g in parser._action_groups if g.title == title), None) or parser.add_argument_group(title)


def check_in_chans(args, channels, data):
    """Raise ``ConfigError`` naming ``--in_chans`` unless it is 0 (the data's) or ``channels``, the ``C`` of ``data``'s
    images: a model built for other channels fails at its first batch."""
    plural = "" if channels == 1 else "s"
    check(
        args.in_chans in (0, channels),
        "in_chans",
        args.in_chans,
        f"{data} gives images of {channels} channel{plural}: leave it at 0 (the data's) or pass {channels}",
    )


def linear_probe_head(hidden_dim, num_classes):
    """The MAE paper's linear-probing head: BatchNorm without affine parameters, then a linear layer.

    Replaces a torchvision ViT's ``heads``; its keys are ``heads.norm.*`` (statistics only) and
    ``heads.head.*``. He et al. (2022), Appendix A.2: the BatchNorm normalises the frozen features,
    which speeds linear probing without changing what a linear classifier can express.
    """
    head = nn.Linear(hidden_dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return nn.Sequential(OrderedDict(norm=nn.BatchNorm1d(hidden_dim, affine=False, eps=1e-6), head=head))
