"""Submit a trainer entry script to SLURM with submitit; on time-out or preemption requeue it to resume its run.

    python -m utils.submit --nodes 2 --gpus_per_node 8 --partition gpu --time 240 trainer_vit.py --data_type ELPV
    python -m utils.submit --cluster local --gpus_per_node 0 --wait trainer_vanilla.py --gpu_devices cpu
    python -m utils.submit --help

Run it from the repository root. Launcher flags come first; everything after the entry script (the first
argument ending in ``.py``) goes to the trainer untouched. ``--time`` is in minutes, ``--mem_gb`` in GB per node.
It prints the job id and log folder and exits; ``--wait`` waits and exits with the job's status (``--cluster
debug`` runs the job in this process, so it always waits; a failure there opens pdb).

Each task runs ``python <script> <trainer flags>`` as a child in the script's folder. With several tasks
(``--nodes`` x ``--gpus_per_node``) the child gets torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; a single task's child gets none of them.

Logs: ``<output_dir>/<proj_name>/submitit/<job id>/`` holds ``<job id>_<task>_log.out`` / ``.err`` (the
trainer's output included) and submitit's pickles. Once the trainer has made its run folder,
``<run folder>/submitit`` is a relative symlink to it (to the newest job's, if several jobs trained the run).

Requeue: submitit's signal (USR2, ``SIGNAL_DELAY_S`` before the time limit, or on preemption) makes task 0
SIGTERM its trainer, which ends its step, writes ``*_preempt_ckpt.pth`` and exits; the job is requeued (at most
``--max_requeues`` time-outs) with ``--resume <run folder>`` in place of any ``--resume``, so the same run folder
continues. A run stopped before its first checkpoint starts afresh.

Exit status: 0 submitted (``--wait``: the job succeeded); 1 the job failed (``--wait``); 2 bad input.
"""

import argparse
import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import submitit

from base.config.checks import check
from base.config.parse import ConfigError, Parser
from base.errors import UserError

SIGNAL_DELAY_S = 120  # SLURM signals this long before the time limit: time to stop and requeue
GRACE_S = 100  # how long a stopping trainer may take to write its checkpoint before it is killed
STOPPED = (128 + signal.SIGTERM, 128 + signal.SIGINT)  # a trainer's status after a preemption checkpoint
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
PROG = "python -m utils.submit"


def split_argv(argv):
    """``(launcher flags, entry script or None, trainer flags)``: ``argv`` split at its first ``*.py``."""
    i = next((i for i, arg in enumerate(argv) if arg.endswith(".py")), None)
    return (list(argv), None, []) if i is None else (list(argv[:i]), argv[i], list(argv[i + 1 :]))


def with_resume(trainer_args, run_dir):
    """``trainer_args`` without any ``--resume X`` / ``--resume=X``, plus ``--resume run_dir`` unless it is None."""
    out, skip = [], False
    for arg in trainer_args:
        if not (skip or arg == "--resume" or arg.startswith("--resume=")):
            out.append(arg)
        skip = arg == "--resume"
    return out + (["--resume", run_dir] if run_dir else [])


def trainer_class(script):
    """The ``TrainerBase`` subclass an entry script runs: the script is imported (not as ``__main__``).

    Raises:
        ConfigError: the script cannot be imported, or defines no single leaf ``TrainerBase`` subclass.
    """
    import runpy

    from base.trainer import TrainerBase

    try:
        found = [
            v
            for v in runpy.run_path(script, run_name="submit_probe").values()
            if isinstance(v, type) and issubclass(v, TrainerBase) and v is not TrainerBase
        ]
    except Exception as exc:  # noqa: BLE001 - any import failure is the script's: name it in one line
        raise ConfigError(f"{script}: cannot import it: {type(exc).__name__}: {exc}") from None
    leaves = [c for c in found if not any(o is not c and issubclass(o, c) for o in found)]
    if len(leaves) != 1:
        raise ConfigError(f"{script}: not a trainer entry script (it defines no single TrainerBase subclass)")
    return leaves[0]


def resolve_run(script, trainer_args):
    """Where the trainer will write, as it resolves its flags: ``(<output_dir>/<proj_name>, run folder, proj_name)``.

    A relative ``--output_dir`` is from the script's folder (the trainer's working folder). The run folder
    is the one ``--resume`` names, or None.

    Raises:
        ConfigError: not a trainer entry script (:func:`trainer_class`). UserError: ``--resume`` names
        nothing resumable. A bad trainer flag exits with status 2 (the trainer's parser).
    """
    from base.checkpoint.resume import locate
    from base.config.parse import parse_config

    args, _ = parse_config(trainer_class(script), trainer_args, check=False)
    root = os.path.dirname(script)
    if not args.resume:
        return os.path.join(root, args.output_dir, args.proj_name), None, args.proj_name
    spec = args.resume if args.resume == "auto" else os.path.join(root, args.resume)
    run_dir = locate(spec, os.path.join(root, args.output_dir), args.proj_name)[0]
    return os.path.dirname(run_dir), run_dir, args.proj_name


def child_environ():
    """This task's environment for its trainer: torchrun's variables when the job has several tasks."""
    environ = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    if submitit.JobEnvironment().num_tasks > 1:
        # Not .export(): it would pin CUDA_VISIBLE_DEVICES to one GPU, and the trainer picks cuda:LOCAL_RANK.
        d = submitit.helpers.TorchDistributedEnvironment()
        environ.update(
            RANK=str(d.rank),
            WORLD_SIZE=str(d.world_size),
            LOCAL_RANK=str(d.local_rank),
            LOCAL_WORLD_SIZE=str(d.local_world_size),
            MASTER_ADDR=d.master_addr,
            MASTER_PORT=str(d.master_port),
        )
    return environ


def _exited(pid):
    """Whether child ``pid`` has exited, without reaping it (the handler may interrupt ``Popen.poll``)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


class TrainerTask(submitit.helpers.Checkpointable):
    """One task: run the entry script (absolute path) with ``trainer_args`` as a child; on submitit's checkpoint
    call stop it and requeue its run. ``project_dir`` is ``<output_dir>/<proj_name>``; ``run_dir`` the run
    folder being continued (the ``--resume`` in ``trainer_args``), or None."""

    def __init__(self, script, trainer_args, project_dir, run_dir=None):
        self.script, self.trainer_args = script, list(trainer_args)
        self.project_dir, self.run_dir = project_dir, run_dir
        self._child, self._before, self._linked = None, None, False

    def _runs(self):
        return {
            d
            for d in glob.glob(os.path.join(self.project_dir, "*"))
            if os.path.isdir(d) and os.path.basename(d) != "submitit"
        }

    def find_run(self):
        """The trainer's run folder: the one continued, else the folder it made (its lock names it), or None."""
        if self.run_dir or self._before is None:  # None: the trainer has not started
            return self.run_dir
        new = sorted(self._runs() - self._before)
        for folder in new:  # base.run.lock writes the holder's pid: other runs may start meanwhile
            try:
                with open(os.path.join(folder, ".lock"), encoding="utf-8") as f:
                    if self._child is not None and f.read().strip() == str(self._child.pid):
                        return folder
            except OSError:
                continue
        return new[0] if len(new) == 1 else None

    def _link_logs(self):
        """Make ``<run folder>/submitit`` a relative symlink to this job's log folder, once the run folder exists."""
        run = None if self._linked else self.find_run()
        if run is None:
            return
        self._linked = True
        logs = os.path.join(self.project_dir, "submitit", str(submitit.JobEnvironment().job_id))  # the %j folder
        link, target = os.path.join(run, "submitit"), os.path.relpath(logs, run)
        try:
            if not (os.path.islink(link) and os.readlink(link) == target):
                os.symlink(target, f"{link}.tmp{os.getpid()}")
                os.replace(f"{link}.tmp{os.getpid()}", link)  # atomic: an older job's link is swapped
        except OSError as exc:  # not worth stopping the training for
            print(f"submit: no log link in the run folder: {exc}", flush=True)

    def __call__(self):
        """Run the trainer to its end and return 0; RuntimeError if it failed, or stopped and no requeue came."""
        import base.checkpoint.resume  # noqa: F401  (now, not later in the signal handler: it imports torch)

        env = submitit.JobEnvironment()
        cmd = [sys.executable, self.script, *self.trainer_args]
        print(f"submit: task {env.global_rank} of {env.num_tasks} in job {env.job_id}: {shlex.join(cmd)}", flush=True)
        usr_sig = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        self._before = self._runs()
        # SLURM signals every process of the job: the trainer leaves submitit's signal to this task.
        self._child = subprocess.Popen(
            cmd,
            cwd=os.path.dirname(self.script),
            env=child_environ(),
            preexec_fn=lambda: signal.signal(usr_sig, signal.SIG_IGN),
        )
        try:
            while self._child.poll() is None:
                if env.global_rank == 0:
                    self._link_logs()
                time.sleep(0.5)
            if env.global_rank == 0:
                self._link_logs()
            status = self._child.returncode
            if status in STOPPED:  # SIGTERM'd by the scheduler, or with task 0 under DDP: its requeue follows
                print(
                    f"submit: the trainer stopped (status {status}); waiting {SIGNAL_DELAY_S} s for the requeue",
                    flush=True,
                )
                time.sleep(SIGNAL_DELAY_S)  # the checkpoint handler ends this task from here
        except BaseException:  # Ctrl-C, scancel, or the requeue's SystemExit: leave no trainer behind
            self._stop_child()
            raise
        if status != 0:
            run = self.find_run()
            raise RuntimeError(
                f"{os.path.basename(self.script)} exited with status {status}; its error line is "
                f"in this task's log" + (f"; run folder {run}" if run else "")
            )
        return status

    def _stop_child(self):
        """SIGTERM the trainer and wait (at most ``GRACE_S``) for its checkpoint; then SIGKILL it."""
        child = self._child
        if child is None or child.returncode is not None or _exited(child.pid):
            return
        child.send_signal(signal.SIGTERM)
        deadline = time.time() + GRACE_S
        while not _exited(child.pid) and time.time() < deadline:
            time.sleep(0.1)
        if not _exited(child.pid):
            print(f"submit: the trainer did not stop within {GRACE_S} s: killed", flush=True)
            child.kill()

    def checkpoint(self):
        """submitit's call on time-out/preemption (task 0 only): stop the trainer, return the same run's requeue:
        ``--resume <run folder>`` if it holds a checkpoint, else a fresh start (never ``--resume auto``: that may
        pick another run of the project)."""
        from base.checkpoint.resume import newest_checkpoint

        self._stop_child()
        run = self.find_run()
        resume = run if run and newest_checkpoint(run) else None
        print(
            f"submit: requeueing with --resume {resume}"
            if resume
            else "submit: requeueing a fresh run (no checkpoint yet)",
            flush=True,
        )
        task = TrainerTask(self.script, with_resume(self.trainer_args, resume), self.project_dir, resume)
        return submitit.helpers.DelayedSubmission(task)


def build_parser():
    """The launcher's flags (those before the entry script)."""
    p = Parser(
        prog=PROG,
        usage=f"{PROG} [launcher flags] ENTRY.py [trainer flags]",
        allow_abbrev=False,
        description="Submit a trainer entry script as a SLURM job (submitit) that requeues and resumes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=1, help="nodes")
    p.add_argument("--gpus_per_node", type=int, default=1, help="GPUs per node, one task each (0: one CPU task)")
    p.add_argument("--cpus_per_task", type=int, default=8, help="CPU cores per task")
    p.add_argument("--mem_gb", type=float, default=0, help="memory per node in GB (0: the cluster's default)")
    for flag, what in (
        ("partition", ""),
        ("account", ""),
        ("qos", " (quality of service)"),
        ("constraint", " (node features, e.g. a GPU type)"),
    ):
        p.add_argument(f"--{flag}", default=None, help=f"SLURM {flag}{what}")
    p.add_argument("--time", type=int, default=60, help="time limit of one attempt, in minutes")
    p.add_argument("--max_requeues", type=int, default=10, help="requeues after time-outs (preemptions are free)")
    p.add_argument(
        "--cluster",
        choices=["slurm", "local", "debug"],
        default=None,
        help="unset: slurm when sbatch exists; local: a job on this machine; debug: in this process",
    )
    p.add_argument("--job_name", default=None, help="job name (unset: the trainer's --proj_name)")
    p.add_argument("--wait", action="store_true", help="wait for the job and exit with its status")
    return p


def parse(argv):
    """``(options, absolute entry script, trainer flags)``; bad input exits with status 2 and one error line."""
    parser = build_parser()
    head, script, tail = split_argv(argv)
    if script is None and not {"-h", "--help"} & set(head):
        parser.error("no entry script: name a trainer script (e.g. trainer_vanilla.py) after the launcher flags")
    opts = parser.parse_args(head)
    if not os.path.isfile(script):
        parser.error(f"{script}: no such entry script")
    try:
        for flag, low in (
            ("nodes", 1),
            ("gpus_per_node", 0),
            ("cpus_per_task", 1),
            ("mem_gb", 0),
            ("time", 1),
            ("max_requeues", 0),
        ):
            check(getattr(opts, flag) >= low, flag, getattr(opts, flag), f"must be at least {low}")
        check(
            opts.nodes == 1 or opts.cluster not in ("local", "debug"),
            "nodes",
            opts.nodes,
            f"--cluster {opts.cluster} runs on this one machine: use --nodes 1",
        )
    except ConfigError as exc:
        parser.error(str(exc))
    if opts.cluster is None and shutil.which("sbatch") is None:
        parser.error("--cluster: no sbatch on this machine; use --cluster local (a job here) or debug (in-process)")
    opts.cluster = opts.cluster or "slurm"
    return opts, os.path.abspath(script), tail


def submit(opts, script, trainer_args):
    """Submit ``script trainer_args`` with ``opts`` and return the submitit job; raises what :func:`resolve_run`
    raises, or RuntimeError / ValueError where submitit refuses (e.g. ``--cluster slurm`` without ``srun``)."""
    project_dir, run_dir, proj_name = resolve_run(script, trainer_args)
    cluster = opts.cluster
    extra = {f"{cluster}_max_num_timeout": opts.max_requeues} if cluster != "debug" else {}
    executor = submitit.AutoExecutor(os.path.join(project_dir, "submitit", "%j"), cluster=cluster, **extra)
    executor.update_parameters(
        name=opts.job_name or proj_name,
        timeout_min=opts.time,
        nodes=opts.nodes,
        tasks_per_node=max(opts.gpus_per_node, 1),
        gpus_per_node=opts.gpus_per_node or None,
        cpus_per_task=opts.cpus_per_task,
        mem_gb=opts.mem_gb or None,
        slurm_partition=opts.partition,
        slurm_account=opts.account,
        slurm_qos=opts.qos,
        slurm_constraint=opts.constraint,
        slurm_signal_delay_s=SIGNAL_DELAY_S,
    )
    return executor.submit(TrainerTask(script, trainer_args, project_dir, run_dir))


def main(argv=None):
    """Parse, submit, print the job id and log folder; wait with ``--wait``. Returns the exit status."""
    opts, script, trainer_args = parse(sys.argv[1:] if argv is None else argv)
    try:
        job = submit(opts, script, trainer_args)
    except (ConfigError, UserError, RuntimeError, ValueError) as exc:
        build_parser().error(str(exc).strip().splitlines()[0])
    print(
        f"submitted job {job.job_id} ({opts.cluster}, {opts.nodes * max(opts.gpus_per_node, 1)} task(s)); "
        f"logs: {job.paths.folder}",
        flush=True,
    )
    if not (opts.wait or opts.cluster == "debug"):
        return 0
    try:
        job.results()
    except Exception as exc:  # submitit re-raises the task's error with its traceback: keep its last line
        print(f"{PROG}: job {job.job_id} failed: {(str(exc).strip().splitlines() or [repr(exc)])[-1]}", file=sys.stderr)
        return 1
    print(f"job {job.job_id} finished", flush=True)
    return 0


if __name__ == "__main__":
    from utils.submit import main as _main  # the module by its import name, so the job's pickle can find it

    sys.exit(_main())
