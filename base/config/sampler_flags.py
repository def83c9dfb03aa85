"""``--sampler``: how every trainer orders an epoch's training samples.

``random`` (the default): a permutation per epoch. ``weighted``: ``len(train)`` indices drawn with replacement
in proportion to the task's per-sample weights (:meth:`base.task.TaskSteps.sample_weights`), as
``torch.utils.data.WeightedRandomSampler`` draws them; both seeded by ``(--seed, epoch)``, so a resumed run
continues at the exact next sample (:class:`base.loop.state.ResumableSampler`).
"""

SAMPLERS = ("random", "weighted")


def add_sampler_arguments(loop):
    """Add ``--sampler`` to ``loop``, the ``loop`` argument group of :mod:`base.config.trainer_flags`."""
    loop.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="random",
        help="training order per epoch: random (a permutation) or weighted (drawn with replacement in proportion "
        "to the task's per-sample weights, e.g. inverse class frequency; see docs/IMBALANCE.md)",
    )
