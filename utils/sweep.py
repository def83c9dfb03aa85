"""Hyperparameter sweeps with Optuna: trials of a trainer drawn from a search space, pruned by validation.

    python -m utils.sweep trainer_vanilla.py --space sweep.yaml --trials 20 --data_type Digits --epochs 5
    python -m utils.sweep trainer_vanilla.py --space sweep.yaml --trials 30 ...     # the same study, 10 more
    python -m utils.sweep trainer_vit.py --space vit.yaml --trials 40 --parallel 4 --submit slurm ...

Everything that is not a flag of this tool goes to every trial's trainer untouched; the space file
(:mod:`utils.sweep_space`) names the flags searched. Each trial is a run of
``<script> <trainer flags> --sweep_trial <trial file>``: the file gives the trial's flag values (the run's
config says where they came from: "sweep trial N") and the study the run reports its monitored
validation metric to after each validation (at each epoch; with ``--val_every_steps``, at each such
step). The median pruner (Optuna's ``MedianPruner``) stops a trial whose metric is worse than the
median of earlier trials at the same point; that run ends with status ``pruned``. A trial's value is
its best monitored validation metric (the mean over ``--seeds`` when several are given; pruning then
follows the first seed's run). The sampler is TPE (Optuna's ``TPESampler``, seeded by the trainer's
``--seed``), or ``--sampler random``.

The study lives in ``<output_dir>/<proj_name>/sweep_<timestamp>/study.journal`` (Optuna's journal
file), beside the trials' run folders and files (layout: :mod:`utils.study`). Re-running the same
command (any ``--trials``) continues it: ``--trials`` is the study's total of complete, pruned and running
trials, so a larger number adds trials. Several processes may share it (``--parallel N``, a second
command, SLURM jobs on one file system): each trial is taken by one of them. A trial left running by a
killed sweep is marked failed and asked again with the same flags, resuming its run folder.

At the end it prints the best trial's flags, its value and the command that reproduces it, and writes
``optimization_history.png`` and ``param_importances.png`` (Optuna's matplotlib plots) and
``sweep_summary.json`` into the study folder.
Exit status: 0 the study has its trials; 1 a trial failed; 2 bad input.
"""

import argparse
import concurrent.futures
import json
import os
import shlex
import socket
import sys
import time
import warnings

from base.config.parse import ConfigError, Parser
from base.run.lock import process_alive
from base.run.sweep_trial import build_pruner
from base.runtime.atomic_files import atomic_write
from utils.cv import add_launch_arguments, launch_settings
from utils.study import (
    Launcher,
    file_lock,
    find_run,
    mean_std,
    open_study,
    resolve_trainer,
    run_flags,
    split_command,
    study_runs,
)
from utils.sweep_space import describe, read_space

PROG = "python -m utils.sweep"
STUDY_NAME = "sweep"
JOURNAL = "study.journal"


def build_parser():
    parser = Parser(
        prog=PROG,
        usage=f"{PROG} [options] TRAINER_SCRIPT [trainer flags]",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--space", required=True, help="YAML file of the flags to search (see utils.sweep_space)")
    parser.add_argument("--trials", type=int, required=True, help="the study's total number of trials")
    parser.add_argument("--sampler", choices=["tpe", "random"], default="tpe", help="Optuna's sampler")
    parser.add_argument("--pruner", choices=["median", "none"], default="median", help="stop poor trials early")
    parser.add_argument(
        "--n_startup_trials", type=int, default=5, help="median pruner: trials finished before it prunes"
    )
    parser.add_argument(
        "--n_warmup_steps", type=int, default=0, help="median pruner: validations of a trial before it may prune"
    )
    add_launch_arguments(parser)
    return parser


def open_optuna_study(study_dir, direction, sampler, seed, pruner):
    """``(study, storage)``: the study in ``<study_dir>/study.journal`` (created, or loaded as it is)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(os.path.join(study_dir, JOURNAL)))
    chosen = optuna.samplers.TPESampler(seed=seed) if sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(
        storage=storage,
        sampler=chosen,
        pruner=build_pruner(pruner),
        study_name=STUDY_NAME,
        direction=direction,
        load_if_exists=True,
    )
    return study, storage


class Sweep:
    """One command's share of the study: ask trials until the study has ``trials``, run each, tell its result."""

    def __init__(self, opts, script, trainer_args, cls, args, space, seeds, study_dir, project_dir):
        self.opts, self.script, self.trainer_args, self.cls = opts, script, trainer_args, cls
        self.monitor, mode = cls.monitored(args)  # the metric follows the runs' flags (e.g. the data type)
        self.space, self.seeds, self.study_dir, self.project_dir = space, seeds, study_dir, project_dir
        # the trial file's pruner: its settings only for the median pruner (the trainer refuses others' extra keys)
        settings = {"n_startup_trials": opts.n_startup_trials, "n_warmup_steps": opts.n_warmup_steps}
        self.pruner = {"name": opts.pruner, **(settings if opts.pruner == "median" else {})}
        direction = "maximize" if mode == "max" else "minimize"
        self.study, self.storage = open_optuna_study(study_dir, direction, opts.sampler, args.seed, self.pruner)
        self.lock = os.path.join(study_dir, ".ask.lock")
        self.failed = []
        self.stopping = False  # set on Ctrl-C: ask nothing more, tell nothing of the interrupted trials

    def counted(self):
        """Trials that count towards ``--trials``: complete, pruned, running."""
        from optuna.trial import TrialState

        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        return [t for t in self.study.get_trials(deepcopy=False) if t.state in states]

    def recover_stale(self):
        """Trials left running by a sweep process of this host that is gone: failed, and asked again with
        the same flags (the new trial resumes the old one's run folder)."""
        from optuna.trial import TrialState

        with file_lock(self.lock):
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                owner = t.user_attrs.get("host"), t.user_attrs.get("pid")
                if owner[0] != socket.gethostname() or process_alive(owner[1]):
                    continue
                self.study.tell(t.number, state=TrialState.FAIL)
                runs = {s: self.trial_run(t.number, s) for s in self.seeds}
                resume = {str(s): r[0] for s, r in runs.items() if r is not None}
                self.study.enqueue_trial(t.params, user_attrs={"resume_runs": resume, "retry_of": t.number})
                print(f"trial {t.number}: its sweep process is gone; asked again with the same flags", flush=True)

    def ask(self):
        """The next trial, or None when the study has its ``--trials``."""
        with file_lock(self.lock):  # count and ask as one step, or two processes overshoot
            if len(self.counted()) >= self.opts.trials:
                return None
            trial = self.study.ask(self.space)
            trial.set_user_attr("host", socket.gethostname())
            trial.set_user_attr("pid", os.getpid())
            return trial

    def trial_file(self, number, seed):
        return os.path.join(self.study_dir, "trials", f"trial_{number:04d}_seed{seed}.json")

    def trial_run(self, number, seed):
        """The run (:func:`utils.study.study_runs` item) of trial ``number`` and ``seed``, or None."""
        return find_run(study_runs(self.study_dir), sweep_trial=self.trial_file(number, seed))

    def write_trial_file(self, trial, seed, report):
        study_id = self.storage.get_study_id_from_name(STUDY_NAME)  # ids, for a process that loads the study
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        doc = {"trial": trial.number, "trial_id": trial_id, "params": trial.params,
               "storage": os.path.join(self.study_dir, JOURNAL), "study_name": STUDY_NAME,
               "pruner": self.pruner, "report": report}  # fmt: skip
        path = self.trial_file(trial.number, seed)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        text = json.dumps(doc, indent=2)
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return path

    def run_trial(self, launcher, trial):
        """Run every seed of ``trial`` and tell the study how it ended."""
        from optuna.trial import TrialState

        resume = trial.user_attrs.get("resume_runs", {})
        jobs = []
        for i, seed in enumerate(self.seeds):
            path = self.write_trial_file(trial, seed, report=i == 0)
            flags = run_flags(self.project_dir, self.study_dir, self.trainer_args, sweep_trial=path, seed=seed)
            if str(seed) in resume:  # a retry of a trial whose sweep was killed: its run continues
                flags += ["--resume", resume[str(seed)]]
            jobs.append((f"trial{trial.number}_seed{seed}", flags))
        codes, runs = [], []
        for (name, flags), seed in zip(jobs, self.seeds):
            codes.append(launcher.run(name, flags))
            if codes[-1] is None:  # stopped before it started
                return
            runs.append(self.trial_run(trial.number, seed))
            if self.stopping or (runs[-1] and runs[-1][2].get("status") == "pruned"):
                break  # (a trial pruned on its first seed needs no other)
        if self.stopping:
            return
        states = [r[2].get("status") if r else None for r in runs]
        if "pruned" in states:
            self.study.tell(trial, state=TrialState.PRUNED)
            print(f"trial {trial.number}: pruned {trial.params}", flush=True)
        elif all(s == "finished" for s in states) and not any(codes):
            value = mean_std([r[2].get("best") for r in runs])[0]
            self.study.tell(trial, value)
            print(f"trial {trial.number}: {value:.4f} {trial.params}", flush=True)
        else:
            self.study.tell(trial, state=TrialState.FAIL)
            self.failed.append(trial.number)
            print(f"trial {trial.number}: failed (exit status {codes}; see its run folder)", flush=True)

    def work(self, launcher):
        """A worker: ask, run, tell, until the study has its trials (or trials keep failing)."""
        while len(self.failed) <= self.opts.trials and not self.stopping:
            trial = self.ask()
            if trial is None:
                return
            self.run_trial(launcher, trial)


def reproduce_command(script, trainer_args, params, seeds):
    """The command line that trains the best trial's flags on their own."""
    flags = [*trainer_args]
    for name, value in params.items():
        flags += [f"--{name}", str(value)]
    if len(seeds) == 1:
        flags += ["--seed", str(seeds[0])]
    return shlex.join(["python", script, *flags])


def write_figures(study, study_dir):
    """Optuna's optimization-history and parameter-importance plots as PNG; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    for name, plot in (("optimization_history", optuna_plots.plot_optimization_history),
                       ("param_importances", optuna_plots.plot_param_importances)):  # fmt: skip
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = plot(study)
            figure = axes.figure if hasattr(axes, "figure") else axes[0].figure
            figure.set_size_inches(7, 4.5)
            figure.tight_layout()
            figure.savefig(os.path.join(study_dir, f"{name}.png"), dpi=100)
            plt.close(figure)
            written.append(os.path.join(study_dir, f"{name}.png"))
        except (ValueError, RuntimeError) as exc:  # e.g. importances need two finished trials
            print(f"sweep: no {name}.png: {exc}", file=sys.stderr)
    return written


def report(sweep, script, trainer_args, seeds):
    """Print the best trial and its command; write the figures and ``sweep_summary.json``."""
    from optuna.trial import TrialState

    trials = sweep.study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary = {
        "study": sweep.study_dir,
        "monitor": f"val_{sweep.monitor}",
        "direction": sweep.study.direction.name.lower(),
        "trials": [
            {"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params} for t in trials
        ],  # fmt: skip
        "best": None,
    }
    counts = {s: sum(t.state.name.lower() == s for t in trials) for s in ("complete", "pruned", "fail", "running")}
    print(f"\nstudy {sweep.study_dir}: {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in counts.items() if n)})")
    if complete:
        best = sweep.study.best_trial
        command = reproduce_command(script, trainer_args, best.params, seeds)
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params, "command": command}
        print(f"best trial {best.number}: val_{sweep.monitor} {best.value:.4f}")
        for name, value in best.params.items():
            print(f"  --{name} {value}")
        print(f"reproduce: {command}")
    write_figures(sweep.study, sweep.study_dir)
    text = json.dumps(summary, indent=2)
    atomic_write(os.path.join(sweep.study_dir, "sweep_summary.json"), lambda f: f.write(text.encode("utf-8")))


def main(argv=None):
    parser = build_parser()
    opts, script, trainer_args = split_command(list(sys.argv[1:] if argv is None else argv), parser)
    try:
        cls, args = resolve_trainer(script, trainer_args, PROG)
        space = read_space(opts.space, cls, trainer_args)
        if opts.trials < 1:
            raise ConfigError(f"--trials {opts.trials}: must be >= 1")
    except ConfigError as exc:
        parser.error(str(exc))
    seeds, parallel = launch_settings(opts, args.seed, opts.trials, parser)
    project_dir = os.path.abspath(os.path.join(args.output_dir, args.proj_name))
    command = {"script": script, "trainer_args": trainer_args, "space": describe(space), "seeds": seeds,
               "sampler": opts.sampler, "pruner": opts.pruner}  # fmt: skip
    study_dir, continued = open_study(project_dir, "sweep", command, new=opts.new)
    print(f"{'continuing' if continued else 'new'} study {study_dir}", flush=True)
    sweep = Sweep(opts, script, trainer_args, cls, args, space, seeds, study_dir, project_dir)
    sweep.recover_stale()
    launcher = Launcher(script, parallel, os.path.join(study_dir, "logs"), opts.submit, opts.submit_args)
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        workers = [pool.submit(sweep.work, launcher) for _ in range(parallel)]
        try:  # the main thread polls (not a blocking wait), so it sees a Ctrl-C at once
            while not all(w.done() for w in workers):
                time.sleep(0.05)
            interrupted = False
        except KeyboardInterrupt:  # the runs got the Ctrl-C too: they stop with a checkpoint
            sweep.stopping = True  # their trials stay running; the next command resumes them
            launcher.stopping.set()  # and no worker starts another
            interrupted = True
        for worker in workers:
            if not interrupted:
                worker.result()  # (a worker's own exception, if any)
    if interrupted:
        print(f"sweep: interrupted; run the same command again to continue {study_dir}", file=sys.stderr)
        return 130
    report(sweep, script, trainer_args, seeds)
    return 1 if sweep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
