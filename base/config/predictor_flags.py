"""Flags every predictor (``predict*.py``) shares."""

import argparse

from base.config.parse import Parser, path_arg, str2bool


def predictor_parser(cls, what):
    """The flags every ``predict*.py`` shares: ``--model_path``, the image files, ``--gpu_devices``, ``--eval_ema``,
    ``--trust_module`` (see :mod:`base.checkpoint.trainer_class`), ``--debug``.

    Args:
        cls: the predictor class (its ``PROG`` and first docstring line are used).
        what: the verb for the images' help, e.g. ``"classify"``.
    """
    parser = Parser(
        prog=cls.PROG,
        description=cls.__doc__.split("\n")[0],
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model_path",
        type=path_arg,
        required=True,
        help="checkpoint (*_ckpt.pth) or weights export (*_best.safetensors beside its .json)",
    )
    parser.add_argument("images", nargs="+", help=f"image files to {what}")
    parser.add_argument("--gpu_devices", default=None, help="'cpu', 'cuda', 'cuda:N' or a CUDA id; unset: GPU if any")
    parser.add_argument(
        "--eval_ema",
        type=str2bool,
        default=None,
        help="use the checkpoint's EMA weights (true) or raw ones (false); unset: as the run validated",
    )
    parser.add_argument(
        "--trust_module",
        action="store_true",
        help="import the checkpoint's trainer module even from outside this project (importing runs its code)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser
