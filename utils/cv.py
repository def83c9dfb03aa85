"""k-fold cross-validation: every fold (and seed) of a trainer, then mean ± std of its metrics.

    python -m utils.cv trainer_vanilla.py --folds 5 --data_type Digits --epochs 5
    python -m utils.cv trainer_vit.py --folds 5 --seeds 0,1,2 --parallel 2 --data_type ELPV --image_size 64
    python -m utils.cv trainer_vit.py --folds 5 --submit slurm --submit_args "--partition gpu --time 60" ...

Everything that is not a flag of this tool goes to the trainer untouched. Fold ``I`` of seed ``S`` runs
``<script> <trainer flags> --folds K --fold I --seed S`` (see ``--folds`` in the trainer's ``--help``:
the train+val pool is split into K folds, stratified by class, or by car for segmentation; the test
split is the one the trainer has without folds). All runs go into one study folder,
``<output_dir>/<proj_name>/cv_<timestamp>/`` (layout: :mod:`utils.study`).

Re-running the same command continues that study: finished runs are kept, unfinished ones resumed from
their newest checkpoint (a run killed before its first checkpoint starts again). ``--new`` starts a
new study instead.

At the end it prints one row per run and ``mean ± std`` (sample std, n - 1) over the finished runs of
the monitored validation metric (its best value) and of every test metric (of the best checkpoint),
and writes ``cv_summary.json`` and ``cv_summary.csv`` into the study folder.
Exit status: 0 every run finished; 1 a run failed (the summary covers the others); 2 bad input.
"""

import argparse
import csv
import io
import json
import os
import sys

from base.config.parse import ConfigError, Parser
from base.runtime.atomic_files import atomic_write
from utils.runs import print_table
from utils.study import (
    Launcher,
    continue_flags,
    find_run,
    format_mean_std,
    mean_std,
    open_study,
    resolve_trainer,
    run_flags,
    run_metrics,
    split_command,
    study_runs,
)

PROG = "python -m utils.cv"


def seeds_type(text):
    """``"0,1,2"`` -> ``[0, 1, 2]`` (distinct ints >= 0)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected a comma list of integers, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: expected distinct integers >= 0, e.g. 0,1,2")
    return seeds


def add_launch_arguments(parser):
    """``--seeds``, ``--parallel``, ``--submit``, ``--submit_args``, ``--new``: how a study launches its runs."""
    parser.add_argument("--seeds", default=None, help="comma list of seeds, each run for every fold (default: --seed)")
    parser.add_argument("--parallel", type=int, default=None, help="runs at once (default 1; with --submit, all)")
    parser.add_argument(
        "--submit",
        choices=["slurm", "local", "debug"],
        default=None,
        help="launch each run through utils.submit on this cluster (it waits for each job)",
    )
    parser.add_argument(
        "--submit_args", default="", help='further utils.submit flags, e.g. "--partition gpu --time 60"'
    )
    parser.add_argument("--new", action="store_true", help="start a new study even if one of this command exists")


def build_parser():
    parser = Parser(
        prog=PROG,
        usage=f"{PROG} [options] TRAINER_SCRIPT [trainer flags]",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--folds", type=int, required=True, help="K >= 2 folds of the train+val pool")
    add_launch_arguments(parser)
    return parser


def launch_settings(opts, trainer_seed, runs_per_seed, parser):
    """``(seeds, parallel)`` from the options (with ``--submit``, ``parallel`` defaults to every run:
    ``runs_per_seed`` x seeds); exits 2 with one line on a bad value."""
    try:
        seeds = seeds_type(opts.seeds) if opts.seeds is not None else [trainer_seed]
    except ValueError as exc:
        parser.error(str(exc))
    parallel = opts.parallel if opts.parallel is not None else (runs_per_seed * len(seeds) if opts.submit else 1)
    if parallel < 1:
        parser.error(f"--parallel {parallel}: must be >= 1")
    return seeds, parallel


def summarize(study_dir, runs, monitor):
    """The summary of the study's runs ``[(fold, seed, run or None)]`` (see :func:`utils.study.study_runs`).

    Returns:
        ``{"study", "monitor", "n", "runs": [{"fold", "seed", "status", "run", "metrics"}], "mean", "std"}``,
        the mean and std over the finished runs of each metric they have.
    """
    rows = []
    for fold, seed, run in runs:
        status = run[2] if run else {}
        rows.append(
            {
                "fold": fold,
                "seed": seed,
                "status": status.get("status") or "not started",
                "run": os.path.relpath(run[0], study_dir) if run else None,
                "metrics": run_metrics(status),
            }
        )
    done = [r for r in rows if r["status"] == "finished"]
    names = [monitor, *sorted({k for r in done for k in r["metrics"]} - {monitor})]
    stats = {name: mean_std([r["metrics"].get(name) for r in done]) for name in names}
    return {
        "study": study_dir,
        "monitor": monitor,
        "n": len(done),
        "runs": rows,
        "mean": {k: v[0] for k, v in stats.items()},
        "std": {k: v[1] for k, v in stats.items()},
    }


def write_summary(summary, prefix):
    """``<prefix>.json`` (the dict) and ``<prefix>.csv`` (a row per run, then ``mean`` and ``std``)."""
    text = json.dumps(summary, indent=2)
    atomic_write(prefix + ".json", lambda f: f.write(text.encode("utf-8")))
    names = list(summary["mean"])
    lines = [["fold", "seed", "status", "run", *names]]
    for r in summary["runs"]:
        lines.append([r["fold"], r["seed"], r["status"], r["run"] or "", *(r["metrics"].get(k, "") for k in names)])
    for what in ("mean", "std"):
        lines.append([what, "", "", "", *("" if summary[what][k] is None else summary[what][k] for k in names)])

    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(lines)
    atomic_write(prefix + ".csv", lambda f: f.write(out.getvalue().encode("utf-8")))


def print_summary(summary, out=None):
    """The table of runs and the ``mean ± std`` line of each metric."""
    out = out or sys.stdout
    names = list(summary["mean"])
    lines = [
        [r["fold"], r["seed"], r["status"], r["run"] or "", *(_four(r["metrics"].get(k)) for k in names)]
        for r in summary["runs"]
    ]
    print_table(["fold", "seed", "status", "run", *names], lines, False, out)
    print(f"\nmean ± std over {summary['n']} finished runs (sample std, n - 1):", file=out)
    for name in names:
        print(f"  {name}: {format_mean_std(summary['mean'][name], summary['std'][name])}", file=out)


def _four(value):
    return "" if value is None else f"{value:.4f}"


def main(argv=None):
    parser = build_parser()
    opts, script, trainer_args = split_command(list(sys.argv[1:] if argv is None else argv), parser)
    try:
        cls, args = resolve_trainer(script, trainer_args, PROG)
        if opts.folds < 2:
            raise ConfigError(f"--folds {opts.folds}: must be at least 2")
    except ConfigError as exc:
        parser.error(str(exc))
    seeds, parallel = launch_settings(opts, args.seed, opts.folds, parser)
    project_dir = os.path.abspath(os.path.join(args.output_dir, args.proj_name))
    command = {"script": script, "trainer_args": trainer_args, "folds": opts.folds, "seeds": seeds}
    study_dir, continued = open_study(project_dir, "cv", command, new=opts.new)
    print(f"{'continuing' if continued else 'new'} study {study_dir}", flush=True)
    existing = study_runs(study_dir)
    jobs = []
    for seed in seeds:
        for fold in range(opts.folds):
            more = continue_flags(find_run(existing, folds=opts.folds, fold=fold, seed=seed))
            if more is None:
                print(f"fold {fold} seed {seed}: finished already, kept", flush=True)
                continue
            flags = run_flags(project_dir, study_dir, trainer_args, folds=opts.folds, fold=fold, seed=seed)
            jobs.append((f"fold{fold}_seed{seed}", flags + more))
    launcher = Launcher(script, parallel, os.path.join(study_dir, "logs"), opts.submit, opts.submit_args)
    try:
        results = launcher.run_all(jobs, lambda name, rc: print(f"{name}: exit status {rc}", flush=True))
    except KeyboardInterrupt:  # the runs got the Ctrl-C too and stopped with a checkpoint
        print(f"cv: interrupted; run the same command again to continue {study_dir}", file=sys.stderr)
        return 130
    final = study_runs(study_dir)
    runs = [
        (fold, seed, find_run(final, folds=opts.folds, fold=fold, seed=seed))
        for seed in seeds
        for fold in range(opts.folds)
    ]
    summary = summarize(study_dir, runs, f"val_{cls.monitored(args)[0]}")
    write_summary(summary, os.path.join(study_dir, "cv_summary"))
    print_summary(summary)
    failed = [name for name, rc in results.items() if rc != 0]
    if failed or summary["n"] < len(runs):
        print(f"cv: {len(runs) - summary['n']} of {len(runs)} runs did not finish ({', '.join(failed)}); "
              f"run the same command again to continue them", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
