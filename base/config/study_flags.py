"""Flags that place a run inside a study of several runs: a k-fold split, a sweep trial.

``--folds K --fold I`` makes fold ``I`` of a K-fold split of the train+val pool the validation set
(the data code does the split: :func:`data.splits.kfold_indices`); ``utils.cv`` runs every fold.
``--sweep_trial FILE`` is set by ``utils.sweep``: the file holds the trial's flag values (read by
:func:`base.config.parse.parse_config` below the command line, their provenance "sweep trial N") and
where its Optuna study lives, which :class:`base.run.sweep_trial.TrialReporter` reports to.
"""

from base.config.checks import check
from base.config.parse import path_arg


def add_study_arguments(parser):
    """Add ``--folds``, ``--fold`` and ``--sweep_trial`` to ``parser`` (group ``study``)."""
    study = parser.add_argument_group("study")
    study.add_argument(
        "--folds",
        type=int,
        default=0,
        help="k-fold cross-validation: split the train+val pool into this many folds, stratified by class "
        "(segmentation: whole cars per fold) and seeded by --seed; --fold is validated on, the rest "
        "trained on; the test split is unchanged (0: off, --val_fraction holds out validation)",
    )
    study.add_argument("--fold", type=int, default=0, help="with --folds: the fold to validate on, 0..folds-1")
    study.add_argument(
        "--sweep_trial",
        type=path_arg,
        default="",
        help="set by utils.sweep: the trial file whose flag values this run takes and whose Optuna study "
        "its validations are reported to (a pruned run ends with status 'pruned')",
    )


def check_study_config(args):
    """Raise ``ConfigError`` naming ``--folds`` or ``--fold`` when they do not make a split."""
    check(args.folds == 0 or args.folds >= 2, "folds", args.folds, "must be 0 (off) or at least 2")
    if args.folds:
        check(0 <= args.fold < args.folds, "fold", args.fold, f"must be in 0..{args.folds - 1} (--folds {args.folds})")
    else:
        check(args.fold == 0, "fold", args.fold, "needs --folds K (the number of folds)")
