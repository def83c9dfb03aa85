"""All runs at a glance: ``python -m utils.runs [Results/] [--proj NAME] [--sort KEY [--desc]] [--csv] [--diff]``.

One row per run folder (a folder holding ``config_*.json``, searched up to
three levels below the given folders): project, timestamp, trainer, model,
data, progress (epochs or steps done of planned), the best monitored
validation metric, the test metric of the best checkpoint, wall time,
status and, for a crashed run, its error line. Status is read from the
``status.json`` each trainer keeps (see :mod:`base.run.status`): finished,
running, preempted, crashed, pruned (a sweep trial its pruner gave up), with
``resumed Nx`` when the run was resumed;
``killed`` when it says running but its process is gone (``kill -9``, a lost
machine); ``unknown`` for runs written before status files existed; ``corrupt
status.json`` when the file cannot be read (a warning line names it).

``--group cv|sweep|seed`` prints one row per group of runs instead: the runs of one ``utils.cv`` study
(``cv_*`` folder), of one ``utils.sweep`` study (``sweep_*``), or runs whose configs differ only in
``--seed``; each row gives the number of runs, how many finished, and ``mean ± std`` (sample std,
n - 1) of the best monitored validation metric and of the test metric of the finished runs.

``--diff`` prints, instead of the results, the config keys that differ
across the listed runs, one column each (``utils.configcmp`` compares two runs
in detail). ``--sort`` takes a column name (``best``, ``test`` and ``wall`` sort by
number), ``--desc`` reverses it; runs without a value go last.
Exit status 0; 2 when a folder does not exist.
"""

import csv
import datetime
import glob
import os
import sys

from base.config.parse import LAUNCH_ONLY, Parser
from base.run.lock import process_alive
from base.run.status import STATUS_FILE, read_status
from utils.configcmp import load

COLUMNS = ("project", "timestamp", "trainer", "model", "data", "progress", "best", "test", "wall", "status", "error")
#: Keys that differ between runs without being part of the experiment.
NOT_COMPARED = LAUNCH_ONLY | {"output_dir", "gpu_devices", "num_workers", "loggers"}


def find_runs(roots):
    """Run folders (holding ``config_*.json``) at most four levels below each of ``roots``, sorted.

    Raises:
        FileNotFoundError: a root is not a folder.
    """
    found = set()
    for root in roots:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: no such folder")
        for depth in range(5):  # <output_dir>/<proj>/<study>/<run>: four levels below an output folder
            pattern = os.path.join(root, *["*"] * depth, "config_*.json")
            found.update(os.path.dirname(p) for p in glob.glob(pattern))
    return sorted(found)


def status_text(status):
    """The status column for a ``status.json`` dict (see the module docstring)."""
    state = status.get("status") or "unknown"
    if (
        state == "running"
        and status.get("host") == os.uname().nodename
        and isinstance(status.get("pid"), int)
        and not process_alive(status["pid"])
    ):
        state = "killed"
    resumes = int(status.get("resumes") or 0)
    return f"{state}, resumed {resumes}x" if resumes else state


def _number(value):
    return f"{value:.4g}" if isinstance(value, (int, float)) else ""


def _wall(seconds):
    return str(datetime.timedelta(seconds=round(seconds))) if isinstance(seconds, (int, float)) else ""


def run_row(folder):
    """``{column: str}`` for one run folder, plus ``_sort`` (``{column: sortable value}``), ``_config``,
    and ``_warning``: a line naming its ``status.json`` when that cannot be read (status ``corrupt status.json``)."""
    config, _, meta = load(folder)
    try:
        status, warning = read_status(folder, strict=True), None
    except ValueError as exc:
        status, warning = {}, str(exc)
    monitor = status.get("monitor") or ""
    metric = monitor[4:] if monitor.startswith("val_") else monitor
    test = status.get("test") or {}
    if status.get("planned_epochs"):
        progress = f"{status.get('epoch', 0)}/{status['planned_epochs']} ep"
    elif status.get("planned_steps"):
        progress = f"{status.get('global_step', 0)}/{status['planned_steps']} steps"
    else:
        progress = ""
    best, test_value = status.get("best"), test.get(metric)
    row = {
        "project": config.get("proj_name") or os.path.basename(os.path.dirname(folder)),
        "timestamp": meta.get("timestamp") or os.path.basename(folder),
        "trainer": status.get("trainer") or meta.get("trainer") or "",
        "model": status.get("model") or config.get("model_type") or "",
        "data": status.get("data") or config.get("data_type") or "",
        "progress": progress,
        "best": f"{monitor} {_number(best)}" if best is not None else "",
        "test": f"{metric} {_number(test_value)}" if test_value is not None else "",
        "wall": _wall(status.get("wall_seconds")),
        "status": status_text(status) if warning is None else f"corrupt {STATUS_FILE}",
        "error": status.get("error") or "",  # why a crashed launch stopped: the line its script printed
    }
    row["_sort"] = {
        **row,
        "best": best,
        "test": test_value,
        "wall": status.get("wall_seconds"),
        "progress": status.get("global_step"),
    }
    row["_config"], row["_warning"], row["_folder"] = config, warning, folder
    row["_values"] = {"best": best, "test": test_value, "monitor": monitor, "state": status.get("status")}
    return row


def sort_rows(rows, name, descending=False):
    """Sort by column ``name``; rows without a value go last.

    Raises:
        ValueError: ``name`` is not a column.
    """
    if name not in COLUMNS:
        raise ValueError(f"--sort {name!r}: choose one of {', '.join(COLUMNS)}")
    present = [r for r in rows if r["_sort"][name] not in (None, "")]
    missing = [r for r in rows if r["_sort"][name] in (None, "")]
    return sorted(present, key=lambda r: r["_sort"][name], reverse=descending) + missing


def differing_keys(rows):
    """Config keys whose values are not the same in every row (a key some runs lack counts), sorted."""
    keys = set().union(*(r["_config"] for r in rows)) - NOT_COMPARED if rows else set()
    missing = object()
    return sorted(k for k in keys if len({repr(r["_config"].get(k, missing)) for r in rows}) > 1)


GROUP_COLUMNS = ("group", "runs", "finished", "monitor", "best", "test")


def group_rows(rows, kind):
    """One row per group of ``rows`` (see the module docstring): ``{column: str}`` of :data:`GROUP_COLUMNS`.

    ``kind``: ``"cv"`` or ``"sweep"`` (runs of one study folder; runs outside such a folder are left out),
    or ``"seed"`` (runs whose configs differ only in ``--seed``, apart from where and how they ran).
    """
    from utils.study import format_mean_std, mean_std

    groups = {}
    for row in rows:
        study = os.path.dirname(row["_folder"])
        if kind == "seed":
            same = {k: v for k, v in row["_config"].items() if k not in NOT_COMPARED | {"seed", "sweep_trial"}}
            key = repr(sorted(same.items()))
        elif os.path.basename(study).startswith(f"{kind}_"):
            key = study
        else:
            continue
        groups.setdefault(key, []).append(row)
    out = []
    for key, members in groups.items():
        done = [r["_values"] for r in members if r["_values"]["state"] == "finished"]
        first = members[0]
        if kind == "seed":
            seeds = ",".join(str(r["_config"].get("seed")) for r in members)
            name = f"{first['project']} {first['model']} {first['data']} seeds {seeds}"
        else:
            name = os.path.join(os.path.basename(os.path.dirname(key)), os.path.basename(key))  # <proj>/<study>
        metric = first["_values"]["monitor"]
        out.append(
            {
                "group": name,
                "runs": str(len(members)),
                "finished": str(len(done)),
                "monitor": metric,
                "best": format_mean_std(*mean_std([v["best"] for v in done])),
                "test": format_mean_std(*mean_std([v["test"] for v in done])),
            }
        )
    return sorted(out, key=lambda r: r["group"])


def print_table(header, lines, as_csv, out=None):
    """Aligned columns (or CSV with ``as_csv``) of ``lines``, lists of str under ``header``, to ``out`` (stdout)."""
    out = out or sys.stdout
    if as_csv:
        csv.writer(out, lineterminator="\n").writerows([header, *lines])
        return
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    for line in [header, *lines]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip(), file=out)


def main(argv=None):
    parser = Parser(prog="python -m utils.runs", description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="*", default=["Results"], help="output folders or run folders")
    parser.add_argument("--proj", default=None, help="only the runs of this --proj_name")
    parser.add_argument("--sort", default="timestamp", help=f"column to sort by: {', '.join(COLUMNS)}")
    parser.add_argument("--desc", action="store_true", help="sort in descending order")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of aligned columns")
    parser.add_argument("--diff", action="store_true", help="print the config keys that differ across the runs")
    parser.add_argument(
        "--group",
        choices=["cv", "sweep", "seed"],
        default=None,
        help="one row per utils.cv study, utils.sweep study, or set of runs differing only in --seed: mean ± std",
    )
    args = parser.parse_args(argv)
    try:
        rows = []
        for folder in find_runs(args.folders):
            try:
                row = run_row(folder)
            except (OSError, ValueError) as exc:  # a broken config: say so, show the others
                print(f"runs: warning: skipped {folder}: {exc}", file=sys.stderr)
                continue
            if row["_warning"]:
                print(f"runs: warning: {row['_warning']}", file=sys.stderr)
            rows.append(row)
        rows = sort_rows([r for r in rows if args.proj is None or r["project"] == args.proj], args.sort, args.desc)
    except (OSError, ValueError) as exc:
        print(f"runs: error: {exc}", file=sys.stderr)
        return 2
    if args.group:
        groups = group_rows(rows, args.group)
        print_table(list(GROUP_COLUMNS), [[g[c] for c in GROUP_COLUMNS] for g in groups], args.csv)
        rows = groups
    elif args.diff:
        keys = differing_keys(rows)
        print_table(
            ["project", "timestamp", *keys],
            [[r["project"], r["timestamp"], *(repr(r["_config"].get(k, "(absent)")) for k in keys)] for r in rows],
            args.csv,
        )
    else:
        print_table(list(COLUMNS), [[r[c] for c in COLUMNS] for r in rows], args.csv)
    if not rows and not args.csv:
        print("no runs found", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
