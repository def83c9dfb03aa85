"""Plot runs' ``metrics.csv`` against the optimizer step, several runs overlaid.

    python inspect_history.py Results/Vanilla/<timestamp>
    python inspect_history.py Results/Vanilla/<a> Results/SegOnCarvana/<b> --out both.png
    python inspect_history.py Results/Vanilla/<a> --metrics val_loss,val_top1

One panel per quantity: the loss (``train_loss`` solid, ``val_loss`` dashed),
each other ``val_*`` metric (``val_seconds`` left out) and ``lr``. Each run is
a colour, named in the legend by its folder (``<proj_name>/<timestamp>``). A
panel shows the runs that have its column, so runs of different tasks mix.
Then one line per run gives the best value of each plotted ``val_*`` column
and its step: the highest for names holding top/acc/dice/iou, else the lowest.
"""

import argparse
import csv
import io
import math
import os

from matplotlib.lines import Line2D

from base.config.parse import Parser
from base.errors import UserError
from utils.plots import plt

LOSS_COLUMNS = ("train_loss", "val_loss")
# Columns that are the x axis or bookkeeping, not a quantity to plot by default.
NOT_PLOTTED = ("epoch", "step", "val_seconds")
HIGHER_IS_BETTER = ("top", "acc", "dice", "iou")


class RunHistory:
    """One run's ``metrics.csv``: ``columns`` maps a column to ``(steps, values)`` lists.

    Rows are sorted by step; of rows with the same step the last in the file
    wins (a resume may log a validation again). Empty cells are missing values
    (a row the CSV writer left short); a column with none is left out.
    """

    def __init__(self, name, path, columns):
        self.name, self.path, self.columns = name, path, columns


def run_name(run_dir):
    """``<proj_name>/<timestamp>``: the last two components of ``run_dir``."""
    parts = os.path.normpath(os.path.abspath(run_dir)).split(os.sep)
    return "/".join(p for p in parts[-2:] if p)


def _number(text, path, line, column):
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{path}: line {line}, column {column}: {text!r} is not a number") from None


def read_history(run_dir):
    """Read ``<run_dir>/metrics.csv`` into a :class:`RunHistory`.

    ``nan``/``inf`` are numbers (a validation right after a resume logs a NaN
    ``train_loss``); they are plotted as gaps and never count as the best.

    Raises:
        UserError: ``run_dir`` is not a folder, has no ``metrics.csv``, the file
            has no rows or no ``step`` column, or a cell is not a number; the
            message names the folder or file (and the line and column).
    """
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: no such run folder")
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(path):
        raise UserError(f"{run_dir}: no metrics.csv in this folder (has it validated yet?)")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames and "step" not in reader.fieldnames:
                raise UserError(f"{path}: no step column (columns: {', '.join(reader.fieldnames)})")
            by_step = {}
            for row in reader:
                if row["step"] in (None, ""):
                    raise UserError(f"{path}: line {reader.line_num}: the step is empty")
                values = {
                    k: _number(v, path, reader.line_num, k)
                    for k, v in row.items()
                    if k is not None and v not in (None, "")
                }
                step = values.pop("step")
                if not math.isfinite(step):
                    raise UserError(f"{path}: line {reader.line_num}: step {row['step']!r} is not finite")
                # a later row of the same step replaces it (a resume logs that validation again)
                by_step[int(step) if step.is_integer() else step] = values
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    if not by_step:
        raise UserError(f"{path}: no rows (an empty file or a header only)")
    columns = {}
    for step in sorted(by_step):
        for key, value in by_step[step].items():
            steps, values = columns.setdefault(key, ([], []))
            steps.append(step)
            values.append(value)
    return RunHistory(run_name(run_dir), path, columns)


def choose_panels(histories, metrics=None):
    """The panels to draw, each a tuple of column names.

    Args:
        histories: :class:`RunHistory` list.
        metrics: column names to restrict to (in this order), or ``None`` for
            the loss, each other ``val_*`` column except ``val_seconds``, and ``lr``.
            ``train_loss`` and ``val_loss`` share one panel either way.

    Raises:
        UserError: a name in ``metrics`` that no run has (all such names are
            listed), or nothing to plot at all.
    """
    present = list(dict.fromkeys(k for h in histories for k in h.columns))
    if metrics is None:
        wanted = [k for k in LOSS_COLUMNS if k in present]
        wanted += [k for k in present if k.startswith("val_") and k not in LOSS_COLUMNS + NOT_PLOTTED]
        wanted += ["lr"] if "lr" in present else []
    else:
        missing = [k for k in metrics if k not in present]  # "step" too: it is the x axis
        if missing:
            raise UserError(f"--metrics: no run has {', '.join(missing)} (columns: {', '.join(present)})")
        wanted = list(metrics)
    panels = []
    for key in wanted:
        loss_panel = next((i for i, p in enumerate(panels) if p[0] in LOSS_COLUMNS), None)
        if key in LOSS_COLUMNS and loss_panel is not None:
            panels[loss_panel] += (key,)
        else:
            panels.append((key,))
    if not panels:
        raise UserError(f"nothing to plot: no loss, val_* or lr column in {', '.join(h.path for h in histories)}")
    return panels


def higher_is_better(column):
    """Whether a larger value of ``column`` is better (accuracy, Dice, IoU)."""
    return any(word in column.lower() for word in HIGHER_IS_BETTER)


def best_values(history, columns):
    """``{column: (best value, its step)}`` for the ``val_*`` columns among ``columns`` that ``history`` has.

    The best is the max for :func:`higher_is_better` columns, else the min; on
    a tie, the earliest step. Non-finite values are skipped; a column without
    a finite value is left out.
    """
    best = {}
    for column in columns:
        if not column.startswith("val_") or column not in history.columns:
            continue
        sign = 1.0 if higher_is_better(column) else -1.0
        for step, value in zip(*history.columns[column]):
            if math.isfinite(value) and (column not in best or sign * value > sign * best[column][0]):
                best[column] = (value, step)
    return best


def _spans_decades(histories, column):
    """Whether ``column``'s finite values are all positive and span more than a factor of 20."""
    values = [v for h in histories for v in h.columns.get(column, ([], []))[1] if math.isfinite(v)]
    return bool(values) and min(values) > 0 and max(values) > 20 * min(values)


def draw(histories, panels, path):
    """Write the figure as a PNG to ``path``: one panel per entry of ``panels``, x = optimizer step.

    Raises:
        UserError: ``path`` cannot be written (the message names it).
    """
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    # Fixed margins in inches rather than tight_layout, which measures every label and
    # doubles the drawing time; tick labels and titles have known sizes here.
    legend = 0.25 * math.ceil(len(histories) / 2) + 0.2
    width, height = 5.0 * ncols, 3.2 * nrows + legend
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(
        left=0.75 / width,
        right=1 - 0.2 / width,
        top=1 - 0.35 / height,
        bottom=(legend + 0.55) / height,
        wspace=0.85 / 3.9,
        hspace=0.9 / 2.2,
    )
    colours = [f"C{i % 10}" for i in range(len(histories))]
    for ax, columns in zip(axes.flat, panels):
        for history, colour in zip(histories, colours):
            for column in columns:
                if column in history.columns:
                    # val_loss dashed so that it reads apart from train_loss in the run's colour
                    style = "--" if column == "val_loss" and len(columns) > 1 else "-"
                    ax.plot(*history.columns[column], style, color=colour, marker=".", markersize=4)
        ax.set(xlabel="step", title="loss" if columns[0] in LOSS_COLUMNS else columns[0])
        if columns == ("lr",) and _spans_decades(histories, "lr"):
            ax.set_yscale("log")  # runs with lr 1e-1 and 1e-3, or a decay to 1e-6, stay readable
        if len(columns) > 1:
            ax.legend(
                [Line2D([], [], color="grey", linestyle=s) for s in ("-", "--")], ["train_loss", "val_loss"], fontsize=8
            )
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.remove()
    fig.legend(
        [Line2D([], [], color=c, marker=".") for c in colours],
        [h.name for h in histories],
        loc="lower center",
        ncol=min(2, len(histories)),
        fontsize=9,
        frameon=False,
    )
    # Render in memory first: a failure leaves an earlier PNG at ``path`` whole.
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    try:
        with open(path, "wb") as f:
            f.write(buffer.getvalue())
    except OSError as exc:
        raise UserError(f"--out {path}: cannot write: {exc.strerror or exc}") from None


def _metric_list(text):
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give column names separated by commas")
    return names


def _png_path(text):
    if not text.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"{text!r}: the figure is a PNG, name it *.png")
    return text


class HistoryInspector:
    """Plot the training history of one or more runs from their ``metrics.csv``."""

    PROG = "inspect_history.py"

    def __init__(self, args):
        self.args = args

    @classmethod
    def from_argv(cls, argv=None):
        parser = Parser(
            prog=cls.PROG, allow_abbrev=False, description="Plot the training history of runs from their metrics.csv."
        )
        parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders holding metrics.csv")
        parser.add_argument(
            "--out",
            type=_png_path,
            default=None,
            help="PNG to write; default <RUN_DIR>/history.png for one run, else history.png in the current folder",
        )
        parser.add_argument(
            "--metrics",
            type=_metric_list,
            default=None,
            help="comma-separated columns to plot, e.g. val_loss,val_top1,lr",
        )
        parser.add_argument("--debug", action="store_true", help="show tracebacks")
        return cls(parser.parse_args(argv))

    def run(self):
        """Draw the figure, print where it went and each run's best values.

        Returns:
            ``{"png": path, "panels": [tuple of columns, ...],
            "best": {run name: {column: (value, step)}}}``.

        Raises:
            UserError: see :func:`read_history`, :func:`choose_panels` and :func:`draw`.
        """
        a = self.args
        dirs = list(dict.fromkeys(os.path.normpath(d) for d in a.run_dirs))  # the same folder twice: once
        histories = [read_history(d) for d in dirs]
        names = [h.name for h in histories]
        for history, folder in zip(histories, dirs):
            if names.count(history.name) > 1:  # same <proj>/<timestamp> under two output dirs
                history.name = folder
        panels = choose_panels(histories, a.metrics)
        path = a.out or (os.path.join(dirs[0], "history.png") if len(dirs) == 1 else "history.png")
        draw(histories, panels, path)
        plotted = [c for p in panels for c in p]
        best = {h.name: best_values(h, plotted) for h in histories}
        print(f"wrote {path}: {len(panels)} panel(s) ({', '.join(plotted)}) for {len(histories)} run(s)")
        for name, values in best.items():
            text = ", ".join(
                f"{c} {v:.6g} ({'max' if higher_is_better(c) else 'min'}) at step {s}" for c, (v, s) in values.items()
            )
            print(f"  {name}: best {text or 'none (no plotted val_* column)'}")
        return {"png": path, "panels": panels, "best": best}
