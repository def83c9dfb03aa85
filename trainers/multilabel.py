"""Multi-label classification (``--data_type ImageCSV``) in the classification trainers: flags, checks, the
monitored metric, validation by mAP and the model card's facts.

A multi-label classifier is the same model with one logit per label, trained with per-label binary
cross-entropy on float ``(N, K)`` 0/1 targets (:func:`loss.classification.build_classification_loss` with
``multilabel=True``) and scored by :class:`utils.multilabel_metrics.MultiLabelMeter`. Its runs monitor
``map`` (max) instead of ``top1``: :func:`monitored` is what ``VanillaTrainer.monitored`` and
``ViTTrainer.monitored`` return, so the early stopper, ``best`` checkpoints, status.json and studies follow the
data type.
"""

from base.config.checks import check
from utils.multilabel_metrics import MultiLabelMeter

MULTILABEL_TYPES = ("ImageCSV",)  #: the --data_type values whose targets are 0/1 vectors


def is_multilabel(args):
    """True when ``--data_type`` gives multi-label targets."""
    return args.data_type in MULTILABEL_TYPES


def add_multilabel_arguments(parser):
    """Add the ``multi-label`` flag group (``--threshold``) to ``parser``."""
    group = parser.add_argument_group("multi-label")
    group.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="multi-label data (ImageCSV): a label is predicted when its probability is >= this (F1 scores, "
        "predict.py)",
    )


def monitored(args):
    """``("map", "max")`` for multi-label data, else ``("top1", "max")``."""
    return ("map", "max") if is_multilabel(args) else ("top1", "max")


def multilabel_defaults(args):
    """``{flag: (value, reason)}`` for :meth:`base.task.TaskSteps.derived_defaults`: label smoothing off for
    multi-label data (it applies to the softmax cross-entropy only)."""
    if is_multilabel(args) and getattr(args, "label_smoothing", 0):
        return {"label_smoothing": (0.0, f"--data_type {args.data_type}: multi-label targets take no label smoothing")}
    return {}


def check_multilabel_config(args):
    """Refuse, naming the flag, what multi-label data cannot train with.

    ``--threshold`` outside (0, 1); with multi-label data ``--label_smoothing`` > 0 (it smooths a softmax's
    one-hot target) and ``--mixup_alpha`` / ``--cutmix_alpha`` > 0 (torchvision's MixUp and CutMix take class
    indices, not 0/1 vectors).

    Raises:
        ConfigError: one line naming the flag.
    """
    check(0 < args.threshold < 1, "threshold", args.threshold, "must be in (0, 1)")
    if not is_multilabel(args):
        return
    why = f"not with --data_type {args.data_type} (multi-label targets)"
    check(
        not getattr(args, "label_smoothing", 0),
        "label_smoothing",
        getattr(args, "label_smoothing", 0),
        f"{why}: label smoothing applies to the single-label cross-entropy; pass 0",
    )
    for flag in ("mixup_alpha", "cutmix_alpha"):
        value = getattr(args, flag, 0)
        check(not value, flag, value, f"{why}: torchvision's MixUp/CutMix take class indices; pass 0")


def validate_multilabel(task, model, loader):
    """Loss, ``map``, ``micro_f1`` and ``mean_f1`` of ``model`` over ``loader`` (see :class:`MultiLabelMeter`).

    ``task`` has ``loss_fn``, ``data.num_classes``, ``args.threshold``, ``to_device`` and ``autocast``. The
    per-label values stay out of the validation row (one column per metric); the evaluator reports them.
    """
    meter = multilabel_meter(task, model, loader)
    metrics = meter.compute()
    return {k: metrics[k] for k in ("loss", "map", "micro_f1", "mean_f1")}


def multilabel_meter(task, model, loader):
    """A :class:`MultiLabelMeter` updated with ``model``'s logits over ``loader`` (not computed yet)."""
    meter = MultiLabelMeter(task.data.num_classes, task.args.threshold)
    for images, targets in loader:
        images, targets = task.to_device((images, targets))
        with task.autocast():
            logits = model(images)
        meter.update(logits.float(), targets, task.loss_fn(logits.float(), targets))
    return meter


def multilabel_card(task):
    """The model card's multi-label facts: ``{"multilabel": True, "threshold": --threshold}``, ``{}`` otherwise."""
    return {"multilabel": True, "threshold": float(task.args.threshold)} if task.data.multilabel else {}
