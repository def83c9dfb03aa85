"""Export a trained model to ONNX, TorchScript or a torch.export program, and check it on real data.

    python -m utils.export --model_path Results/Vanilla/<run>/Vanilla_best_ckpt.pth --format onnx
    python -m utils.export --model_path Results/ViT/<run>/vit_ti_16_best.safetensors --format exported_program \
        --dynamic_batch --batches 2

The model and the run's validation split are rebuilt from the checkpoint alone, as the evaluators do
(:class:`base.evaluator.EvaluatorBase`). The export is written beside the checkpoint as
``<checkpoint stem>.onnx`` / ``.torchscript.pt`` / ``.pt2`` (or to ``--output``), read back from disk and
run on the first ``--batches`` validation batches; its outputs are compared with the PyTorch model's
(float32, eval mode, no autocast). ONNX runs through onnxruntime's CPUExecutionProvider.
The model is built through the trainer class the checkpoint records (``"module:Class"``, a subclass
of one of :data:`TRAINER_MODULES`' trainers); a module outside this project needs ``--trust_module``
(:mod:`base.checkpoint.trainer_class`).

The file carries the checkpoint's model card as JSON (class names, input shape, and the input
recipe: colour, resize, crop, mean, std, NCHW float32 layout; see :mod:`data.input_recipe`), so its
user can make the inputs the model was evaluated on: ONNX metadata ``model_card``
(``onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map["model_card"]``),
TorchScript's extra file ``model_card.json`` (``torch.jit.load(path, _extra_files=...)``),
torch.export's extra file ``model_card.json`` (``torch.export.load(path, extra_files=...)``).

Exit status (as :func:`base.cli.main`): 0 when the largest absolute difference is <= ``--atol``; 1 when
it is larger (the file is removed) or for a file problem (unreadable checkpoint, unwritable output, a
model that does not export); 2 for a bad flag. Errors are one line; ``--debug`` shows tracebacks.
"""

import argparse
import importlib
import json
import os
import sys
import warnings

import torch

from base.checkpoint.files import load_model_state
from base.checkpoint.trainer_class import recorded_ref, resolve_trainer
from base.cli import one_line
from base.config.checks import check
from base.config.parse import ConfigError, Parser, path_arg, str2bool
from base.errors import UserError
from base.evaluator import EvaluatorBase, load_saved_model
from base.runtime.atomic_files import write_or_fail

PROG = "python -m utils.export"
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported_program": ".pt2"}
#: Trainer class name (as checkpoints store it) -> its module; imported only for the checkpoint at hand.
TRAINER_MODULES = {
    "VanillaTrainer": "trainers.vanilla_trainer",
    "ViTTrainer": "trainers.vit_trainer",
    "SegOnCarvanaTrainer": "trainers.seg_on_carvana_trainer",
    "SegTrainer": "trainers.seg_trainer",
}


def parse_args(argv=None):
    """The export flags (strict; argparse exits 2 on a bad one).

    Raises:
        ConfigError: ``--batches`` < 1, ``--atol`` negative or not finite, ``--gpu_devices`` a list,
            or ``--output`` naming the checkpoint itself.
    """
    parser = Parser(
        prog=PROG,
        description=__doc__.split("\n")[0],
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model_path",
        type=path_arg,
        required=True,
        help="checkpoint (*_ckpt.pth) or weights export (*_best.safetensors beside its .json)",
    )
    parser.add_argument("--format", required=True, choices=list(SUFFIXES), help="what to write")
    parser.add_argument(
        "--output",
        default=None,
        help="file to write (default: <checkpoint stem>" + "/".join(SUFFIXES.values()) + " beside the checkpoint)",
    )
    parser.add_argument(
        "--dynamic_batch",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="any batch size (else the first validation batch's size is fixed in the file)",
    )
    parser.add_argument("--batches", type=int, default=1, help="validation batches to compare outputs on")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest absolute output difference accepted")
    parser.add_argument("--gpu_devices", default="cpu", help="device the model is exported from and checked on")
    parser.add_argument(
        "--eval_ema",
        type=str2bool,
        default=None,
        help="EMA weights (true) or raw ones (false) of a .pth; unset: those the run validated",
    )
    parser.add_argument(
        "--trust_module",
        action="store_true",
        help="import the checkpoint's trainer module even from outside this project (importing runs its code)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    check(args.batches >= 1, "batches", args.batches, "must be >= 1")
    check(0 <= args.atol < float("inf"), "atol", args.atol, "must be a finite number >= 0")
    check("," not in str(args.gpu_devices), "gpu_devices", args.gpu_devices, "one device: export runs in one process")
    args.output = os.path.expanduser(args.output or os.path.splitext(args.model_path)[0] + SUFFIXES[args.format])
    check(
        os.path.abspath(args.output) != os.path.abspath(args.model_path),
        "output",
        args.output,
        "is the checkpoint itself; name another file",
    )
    return args


class _Rebuild(EvaluatorBase):
    """:class:`EvaluatorBase`'s config resolution for the trainer the checkpoint names (set per instance)."""

    def evaluate(self):  # the exporter compares outputs instead of scoring
        raise NotImplementedError


def trainer_class_of(saved, extras, path, trust=False):
    """The trainer class that wrote ``path``: the ``"module:Class"`` it records (a subclass of a trainer of
    :data:`TRAINER_MODULES`, imported by :func:`base.checkpoint.trainer_class.resolve_trainer`, outside this
    project only with ``trust``), else the name it stores, else (a segmentation ``.safetensors`` of before,
    whose model card is empty) the one whose models include the saved ``model_type``.

    Raises:
        UserError: a trainer this module does not export; CheckpointError: a recorded class that cannot
            be imported (see :func:`~base.checkpoint.trainer_class.resolve_trainer`). Both name the file.
    """
    card = extras.get("model_card") or {}
    name = extras.get("trainer") or card.get("trainer")
    ref = recorded_ref(extras)
    if ref is not None:
        found = resolve_trainer(ref, f"--model_path {path}", trust)
        if any(TRAINER_MODULES.get(k.__name__) == k.__module__ for k in found.__mro__):
            return found
        raise UserError(
            f"--model_path {path}: a {ref} checkpoint; this exports {', '.join(TRAINER_MODULES)} ones "
            f"and their subclasses"
        )
    if name is None:
        from model.classifiers import CLASSIFIERS
        from model.segmentation import SEG_MODELS

        model_type = saved.get("model_type")
        name = (
            "VanillaTrainer"
            if model_type in CLASSIFIERS
            else "SegOnCarvanaTrainer"
            if model_type in SEG_MODELS
            else "ViTTrainer"
        )
    if name not in TRAINER_MODULES:
        raise UserError(f"--model_path {path}: a {name} checkpoint; this exports {', '.join(TRAINER_MODULES)} ones")
    return getattr(importlib.import_module(TRAINER_MODULES[name]), name)


def rebuild(args, weights, saved, extras):
    """The checkpoint's trainer built with its saved config (``--gpu_devices`` and ``--eval_ema`` override),
    its model holding ``weights`` in eval mode; the other arguments are :func:`load_saved_model`'s results.

    Raises:
        CheckpointError: weights that do not fit the model (names the file).
        ConfigError: the saved config fails the trainer's checks; ``--gpu_devices`` names no device here.
    """
    given = {"model_path": args.model_path, "gpu_devices": args.gpu_devices}
    if args.eval_ema is not None:
        given["eval_ema"] = args.eval_ema
    helper = _Rebuild(argparse.Namespace(**given))
    helper.trainer_class = trainer_class_of(saved, extras, args.model_path, args.trust_module)
    task = helper.trainer_class(helper.resolve_task_config(saved))
    task.build()
    load_model_state(task.model, weights, f"--model_path {args.model_path} (model_type {saved.get('model_type')!r})")
    task.model.eval()
    return task


def validation_inputs(task, count, path):
    """Model inputs of the first ``count`` batches of the run's validation split, in loader order.

    Returns:
        a list of float32 tensors on ``task.device``: ``(N, C, H, W)`` images, normalized as in training
        (a classification batch's first item, a segmentation batch's ``"image"``).

    Raises:
        UserError: the validation split yields no batch.
    """
    inputs = []
    for batch in task.loaders["val"]:
        if batch is None:  # --bad_images skip: every sample of this batch was unreadable
            continue
        inputs.append(task.to_device(batch["image"] if isinstance(batch, dict) else batch[0]).float())
        if len(inputs) == count:
            break
    if not inputs:
        raise UserError(f"--model_path {path}: the run's validation split is empty; nothing to check on")
    return inputs


def _flat(output):
    """The tensors of a model output (a tensor, or nested tuples/lists/dicts of them), in order."""
    if torch.is_tensor(output):
        return [output]
    items = output.values() if isinstance(output, dict) else output
    return [t for item in items for t in _flat(item)]


#: Name of the model card inside an export (ONNX metadata key; TorchScript / torch.export extra file).
CARD_KEY, CARD_FILE = "model_card", "model_card.json"


def write_export(model, example, fmt, path, dynamic, card=None):
    """Export ``model`` traced on ``example`` (float32 ``(N, C, H, W)``) as ``fmt``; write ``path`` atomically.

    With ``dynamic`` the batch dimension is symbolic (ONNX dynamic axis / ``torch.export.Dim``); TorchScript
    traces carry no such flag, so the check on another batch size (see :func:`run`) is what tells.
    ``card`` (a JSON-able dict, the checkpoint's model card) goes into the file (module docstring).

    Raises:
        UserError: the exporter fails on the model (its first line); CheckpointError: ``path`` cannot be written.
    """
    batch = {0: torch.export.Dim("batch")} if dynamic else None
    card_json = json.dumps(card or {}, sort_keys=True)
    try:
        with warnings.catch_warnings():  # tracer notes on Python values: the output check below decides
            warnings.simplefilter("ignore")
            if fmt == "onnx":
                # The dynamo-based exporter (torch's default, needs onnxscript) handles Vanilla, SmallCNN,
                # resnet18, vit_ti_16 and UNet, dynamic batch included; the TorchScript-based one is deprecated.
                program = torch.onnx.export(
                    model,
                    (example,),
                    dynamo=True,
                    input_names=["images"],
                    output_names=["output"],
                    dynamic_shapes=(batch,) if dynamic else None,
                    external_data=False,
                    verbose=False,
                )
                proto = program.model_proto  # (a property that serializes the model anew each time)
                proto.metadata_props.add(key=CARD_KEY, value=card_json)
                data = proto.SerializeToString()
                write_fn = lambda f: f.write(data)  # noqa: E731
            elif fmt == "torchscript":
                traced = torch.jit.trace(model, example, check_trace=False, strict=False)
                extra = {CARD_FILE: card_json}
                write_fn = lambda f: _quiet(torch.jit.save, traced, f, _extra_files=extra)  # noqa: E731
            else:
                program = torch.export.export(model, (example,), dynamic_shapes=(batch,) if dynamic else None)
                write_fn = lambda f: torch.export.save(program, f, extra_files={CARD_FILE: card_json})  # noqa: E731
    except Exception as exc:  # noqa: BLE001 - any exporter failure is "this model does not export"
        raise UserError(
            f"cannot export {type(model).__name__} as {fmt}: {type(exc).__name__}: {one_line(exc)[:300]}"
        ) from exc
    write_or_fail(path, write_fn, what="export")


def _quiet(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` without the FutureWarning torch 2.14 gives for every ``torch.jit`` save/load."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return fn(*args, **kwargs)


def load_export(fmt, path, device):
    """A function running the export at ``path`` on a float32 ``(N, C, H, W)`` tensor; returns its output tensors."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: [torch.from_numpy(o) for o in session.run(None, {name: x.cpu().numpy()})]
    if fmt == "torchscript":
        module = _quiet(torch.jit.load, path, map_location=device)
    else:
        module = torch.export.load(path).module()
    return lambda x: _flat(module(x))


def largest_difference(reference, exported):
    """Largest absolute difference (float, in the model's output units, e.g. logits) over all output tensors;
    ``inf`` when the exported outputs differ in number or shape, ``nan`` where either holds NaN."""
    if len(reference) != len(exported) or any(r.shape != e.shape for r, e in zip(reference, exported)):
        return float("inf")
    return max(
        float((r.detach().cpu().double() - e.detach().cpu().double()).abs().max()) if r.numel() else 0.0
        for r, e in zip(reference, exported)
    )


def run(args):
    """Rebuild, export, read back, compare; print what was written and the largest difference.

    Returns:
        the largest absolute difference (float) over the checked batches.

    Raises:
        UserError: the difference exceeds ``--atol`` (the export is removed); ``--output``'s folder does
            not exist; CheckpointError, ConfigError: see :func:`load_saved_model`, :func:`rebuild`;
            :func:`validation_inputs` and :func:`write_export` raise UserError too.
    """
    weights, saved, extras = load_saved_model(args.model_path, use_ema=args.eval_ema)  # names a bad file
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):  # before the minutes a large model's rebuild and export may take
        raise UserError(f"--output {args.output}: no such folder {folder}")
    task = rebuild(args, weights, saved, extras)
    model, inputs = task.model, validation_inputs(task, args.batches, args.model_path)
    example = inputs[0]
    if args.dynamic_batch:
        if len(example) == 1:  # torch.export fixes a dimension of size 1: trace on two samples
            example = torch.cat([example, example])
        inputs.append(example[: len(example) // 2])  # a batch size the export was not traced with
    print(
        f"--model_path {args.model_path}: exporting its {extras['weights']} weights ({task.args.model_type}) as "
        f"{args.format} from {task.device}"
    )
    # The rebuilt task's card: it describes the inputs checked below, older checkpoints' included
    # (their saved cards may predate the input recipe).
    write_export(model, example, args.format, args.output, args.dynamic_batch, task.model_card())
    exported = load_export(args.format, args.output, task.device)
    checked = [x for x in inputs if args.dynamic_batch or x.shape == example.shape]  # a fixed batch size only
    with torch.no_grad():
        diffs = [largest_difference(_flat(model(x)), exported(x)) for x in checked]
    diff = float("nan") if any(d != d for d in diffs) else max(diffs)  # max() would skip a NaN
    print(
        f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.2f} MB, batch "
        f"{'dynamic' if args.dynamic_batch else len(example)}); checked on {len(checked)} batch(es) of "
        f"{', '.join(str(len(x)) for x in checked)} validation inputs (float32 "
        f"{'x'.join(map(str, example.shape[1:]))}): largest absolute difference {diff:.3g}"
        + (
            f" ({len(inputs) - len(checked)} batch(es) of another size skipped: the file's batch size is fixed)"
            if len(checked) < len(inputs)
            else ""
        )
    )
    if not diff <= args.atol:  # NaN fails too
        os.remove(args.output)
        raise UserError(
            f"{args.output}: the export's outputs differ from PyTorch's by up to {diff:.3g} "
            f"(> --atol {args.atol:g}) on validation inputs; removed it"
        )
    return diff


def main(argv=None):
    """Parse ``argv``, export and check; return the exit status (see the module docstring)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        run(parse_args(argv))
    except SystemExit as exc:  # argparse: 2 after its one-line error, 0 after --help
        return exc.code if isinstance(exc.code, int) else 2
    except (UserError, ConfigError) as exc:
        if debug:
            raise
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
