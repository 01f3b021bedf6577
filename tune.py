"""Hyperparameter search with Optuna over any training script: each trial is a real run, pruned on its evaluations.

    python tune.py --script ppo_continuous.py --space configs/tune/ppo_pendulum.yaml --n-trials 20 --workers 2 \\
        -- --env-id Pendulum-v1 --total-timesteps 100000 --eval-every 10000 --no-capture-video

The search space is a small YAML, TOML or JSON file, one script argument per key:
    learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}   # a float range (an int range for an int argument)
    num_steps: [256, 512, 1024, 2048]                          # a choice
Each trial runs the script once per --seeds entry (in parallel) in STUDY_DIR/runs/, with the flags after `--` and the
trial's values; its value is the mean over the seeds of the final evaluation (metrics.json). Its evaluations during the
run go to the pruner (median or Hyperband), which stops a trial that trails the others at the same step.
The study lives in Optuna's file journal, STUDY_DIR/journal.log (no database server; `--storage URL` for one), so
several workers share it: threads here (--workers), or Slurm array tasks (--slurm). A killed study resumes when the same
command is run again: a trial cut short is run again with its values, and its runs resume from their checkpoints.
Outputs, rewritten after every trial: best.yaml (the best trial's arguments, a --config file), trials.csv and trials.md,
history.png and importance.png (Optuna's figures), study.json (the summary that README tables are made from).
"""

import contextlib
import csv
import fcntl
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields
from importlib import import_module
from pathlib import Path
from typing import Any, Literal, Optional

import optuna
import tyro
import yaml
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from config import INVOCATION, UsageError, config_flags, field_kind, parse_flags, read_file, tyro_message, value_flags
from runlib import EXIT_INTERRUPTED, RunArgs, atomic_write

ROOT = Path(__file__).resolve().parent
SET_BY_TUNE = ("seed", "exp_name", "runs_dir", "resume", "eval_checkpoint")  # each trial's own
STUDY = "study"  # the study's name in its storage
POLL_S = 0.5  # how often a running trial's metrics.json is read for new evaluations


@dataclass
class Args:
    script: str = "ppo_continuous.py"
    """the training script whose arguments are tuned"""
    space: str = "configs/tune/ppo_pendulum.yaml"
    """the search space: a YAML, TOML or JSON file of ARG: {low, high[, log][, step]} (a range) or ARG: [values]"""
    study_dir: Optional[str] = None
    """where the study, its runs and its outputs go (default: runs/_tune/{script}__{space file's name})"""
    n_trials: int = 20
    """trials in all, pruned ones included; a resumed study runs what is missing (0: only rewrite the outputs)"""
    workers: int = 1
    """trials at once (here: threads, each running its trial's seeds as processes; --slurm: array tasks)"""
    seeds: tuple[int, ...] = (1,)
    """the seeds of every trial; its value is the mean of their final evaluations"""
    direction: Literal["maximize", "minimize"] = "maximize"
    """maximize the final evaluation return (minimize: for a cost)"""
    pruner: Literal["median", "hyperband", "none"] = "median"
    """stop trials whose evaluations trail: `median` (of the finished trials at the same step), `hyperband`, `none`"""
    startup_trials: int = 5
    """trials sampled at random, and finished before the median pruner prunes anything"""
    warmup_steps: int = 0
    """env steps before a trial can be pruned (early evaluations are noisy)"""
    sampler_seed: int = 0
    """the seed of Optuna's TPE sampler"""
    storage: Optional[str] = None
    """an Optuna storage URL (e.g. postgresql://user@host/db) instead of STUDY_DIR/journal.log"""
    slurm: bool = False
    """submit --workers Slurm array tasks, each running trials until the study has --n-trials; then return"""
    sbatch_args: str = ""
    """more sbatch options, split on spaces (e.g. --time=4:00:00 --partition=cpu)"""
    python: str = sys.executable
    """the python that runs the trials"""
    worker: bool = False
    """(internal) run as one Slurm array task"""


@dataclass
class Study:
    """What a study is, fixed when it is created: a resume with other values is refused."""

    script: str
    space: dict[str, Any]
    flags: list[str]  # the flags after `--`, given to every trial
    seeds: list[int]
    direction: Literal["maximize", "minimize"]


# ---- the search space ----


def read_space(path: str, args_type: type) -> dict[str, Any]:
    """The search space, checked: every key an argument of the script, every range and value one it takes."""
    space = read_file(path)
    where = f"--space {path}"
    if not space:
        raise UsageError(f"{where} is empty: give at least one ARG: {{low: A, high: B}} or ARG: [values]")
    for key, spec in space.items():
        if key.replace("-", "_") in SET_BY_TUNE:
            raise UsageError(f"{where}: {key} is set by tune.py for each trial; it cannot be searched")
        if isinstance(spec, list):
            if not spec:
                raise UsageError(f"{where}: {key} has no values")
            for value in spec:
                value_flags(args_type, key, value, where)
            continue
        if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log", "step"}:
            raise UsageError(f"{where}: {key} must be {{low: A, high: B[, log: true][, step: S]}} or a list of values")
        value_flags(args_type, key, spec["low"], where)  # an unknown key, or a bound of the wrong type
        value_flags(args_type, key, spec["high"], where)
        kind, _ = field_kind(args_type, key.replace("-", "_"))
        low, high = spec["low"], spec["high"]
        if kind not in (int, float) or not all(isinstance(b, (int, float)) for b in (low, high)) or not low < high:
            raise UsageError(f"{where}: {key}: a range needs a number argument and low < high, got {low!r}, {high!r}")
        if spec.get("log") and low <= 0:
            raise UsageError(f"{where}: {key} has log: true, so low must be > 0, got {low!r}")
    return space


def choice(value: object) -> None | bool | int | float | str:
    """Optuna's choices are scalars: a list value (hidden_sizes: [[64, 64], [256, 256]]) goes in as its JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def suggest(trial: optuna.Trial, space: dict[str, Any], args_type: type) -> dict[str, Any]:
    """The trial's value of each argument of the space."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            picked = trial.suggest_categorical(key, [choice(v) for v in spec])
            values[key] = next(v for v in spec if choice(v) == picked)
        elif field_kind(args_type, key.replace("-", "_"))[0] is int:
            step, log = int(spec.get("step", 1)), bool(spec.get("log"))
            values[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=step, log=log)
        else:
            step_f, log = spec.get("step"), bool(spec.get("log"))
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), step=step_f, log=log)
    return values


# ---- a trial: the script's runs, one per seed ----

LIVE: set[subprocess.Popen[bytes]] = set()  # every run in progress: stopped with tune.py


def report_evaluations(trial: optuna.Trial, run_dirs: list[Path], eval_every: int, reported: set[int]) -> None:
    """Each evaluation that every seed has made, as the mean over the seeds, at its step (rounded down to a multiple of
    --eval-every, so that trials with other rollout sizes compare at the same steps)."""
    curves = []
    for run_dir in run_dirs:
        try:
            evals = json.loads((run_dir / "metrics.json").read_text())["eval"]
        except (OSError, ValueError):  # not written yet
            return
        curves.append({step // eval_every * eval_every: r for step, r in zip(evals["global_step"], evals["mean_return"])})
    for step in sorted(set.intersection(*(set(c) for c in curves)) - reported):
        trial.report(sum(c[step] for c in curves) / len(curves), step)
        reported.add(step)


def run_trial(trial: optuna.Trial, study: Study, args: Args, base: RunArgs, args_type: type, study_dir: Path) -> float:
    """The objective: the trial's runs, pruned on their evaluations; the mean of their final evaluations."""
    values = suggest(trial, study.space, args_type)
    name = trial.user_attrs.get("run") or f"trial{trial.number:04d}"  # a trial cut short by a kill: its runs resume
    trial.set_user_attr("run", name)
    flags = study.flags + [token for key, value in values.items() for token in value_flags(args_type, key, value, "")]
    (study_dir / "logs").mkdir(parents=True, exist_ok=True)
    procs, run_dirs = [], []
    for seed in study.seeds:
        own = ["--seed", str(seed), "--exp-name", name, "--runs-dir", str(study_dir / "runs"), "--resume"]
        with open(study_dir / "logs" / f"{name}__seed{seed}.log", "ab") as log:
            command = [args.python, str(script_path(args)), *flags, *own]
            log.write(f"$ {shlex.join(command)}\n".encode())
            log.flush()
            procs.append(
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"OMP_NUM_THREADS": "1"})
            )
        run_dirs.append(study_dir / "runs" / f"{base.env_id.replace('/', '-')}__{name}__seed{seed}")
    LIVE.update(procs)
    reported: set[int] = set()
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(POLL_S)
            report_evaluations(trial, run_dirs, base.eval_every, reported)
            if trial.should_prune():
                raise optuna.TrialPruned(f"trial {trial.number} pruned at step {max(reported)}")
    except KeyboardInterrupt:  # Ctrl-C reached the runs too: each saves its last whole iteration and exits 75
        trial.set_user_attr("interrupted", True)
        for p in procs:  # let them finish saving: a SIGTERM below would cut the save short
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=60)
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
            p.wait()
        LIVE.difference_update(procs)
    report_evaluations(trial, run_dirs, base.eval_every, reported)  # the last ones: what later trials are pruned against
    failed = [(seed, p.returncode) for seed, p in zip(study.seeds, procs) if p.returncode]
    if failed:
        seed, rc = failed[0]
        if all(rc == EXIT_INTERRUPTED for _, rc in failed):  # stopped by a signal, saved: recover() runs it again
            trial.set_user_attr("interrupted", True)
            raise RuntimeError(f"trial {trial.number}: a signal stopped seed {seed}'s run; the next start resumes it")
        raise RuntimeError(f"trial {trial.number}: seed {seed} exited with {rc}: see {study_dir}/logs/{name}__seed{seed}.log")
    finals = [json.loads((d / "metrics.json").read_text())["eval"]["mean_return"][-1] for d in run_dirs]
    trial.set_user_attr("final_returns", finals)
    return sum(finals) / len(finals)


# ---- the study ----


def open_study(args: Args, study: Study, study_dir: Path) -> optuna.Study:
    """The study in its storage: created, or loaded if it is the same study (else refused)."""
    if args.storage:
        storage: str | JournalStorage = args.storage
    else:
        storage = JournalStorage(JournalFileBackend(str(study_dir / "journal.log")))
    seed = args.sampler_seed + int(os.environ.get("SLURM_ARRAY_TASK_ID", 0))  # workers with one seed draw alike
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=args.startup_trials)
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if args.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=args.startup_trials, n_warmup_steps=args.warmup_steps)
    elif args.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=max(args.warmup_steps, 1), max_resource="auto")
    name = STUDY if args.storage is None else study_dir.name  # one database holds many studies
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "Using an existing study": the trials' lines stay
    opened = optuna.create_study(
        storage=storage, sampler=sampler, pruner=pruner, study_name=name, direction=study.direction, load_if_exists=True
    )
    optuna.logging.set_verbosity(optuna.logging.INFO)
    saved = opened.user_attrs.get("study")
    if saved is None:
        opened.set_user_attr("study", asdict(study))
    elif saved != asdict(study):
        differ = ", ".join(k for k in saved if saved[k] != asdict(study)[k])
        raise UsageError(f"{study_dir} holds a study with other {differ}: run it as it was, or pass another --study-dir")
    return opened


def recover(opened: optuna.Study) -> None:
    """Trials left running by a killed tune.py fail, and run again with their values: their runs resume. So do trials
    whose runs a signal stopped (exit 75), once."""
    trials = opened.get_trials(deepcopy=False)
    for trial in trials:
        run = trial.user_attrs.get("run", f"trial{trial.number:04d}")
        if trial.state == TrialState.RUNNING:
            opened.tell(trial.number, state=TrialState.FAIL)
            print(f"trial {trial.number} was cut short: it runs again, its runs resume from their checkpoints", flush=True)
        elif trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted"):
            if any(t.number > trial.number and t.user_attrs.get("run") == run for t in trials):
                continue  # it ran again already
            print(f"trial {trial.number} was stopped by a signal: it runs again, its runs resume", flush=True)
        else:
            continue
        opened.enqueue_trial(trial.params, user_attrs={"run": run})


def finished(opened: optuna.Study) -> int:
    return len(opened.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


# ---- the outputs ----

WRITING = threading.Lock()  # trials end on several threads


def best_config(opened: optuna.Study, args_type: type, study: Study) -> dict[str, Any]:
    """The best trial's arguments that differ from the script's defaults: a --config file's content."""
    best = opened.best_trial
    values = {k: json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v for k, v in best.params.items()}
    flags = study.flags + [t for k, v in values.items() for t in value_flags(args_type, k, v, "")]
    args: Any = parse_flags(args_type, config_flags(args_type, flags) + flags)
    default: Any = args_type()
    skip = set(INVOCATION) | set(SET_BY_TUNE)
    return {
        f.name: jsonable(getattr(args, f.name))
        for f in fields(args)
        if f.name not in skip and getattr(args, f.name) != getattr(default, f.name)
    }


def jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def write_outputs(opened: optuna.Study, study: Study, base: RunArgs, args_type: type, study_dir: Path) -> None:
    """best.yaml, trials.csv, trials.md, study.json, history.png and importance.png, each written atomically."""
    trials = opened.get_trials(deepcopy=False)
    keys = list(study.space)
    rows: list[dict[str, Any]] = [
        {
            "trial": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "last_step": t.last_step,
            "minutes": round(t.duration.total_seconds() / 60, 2) if t.duration else None,
            **{k: t.params.get(k) for k in keys},
        }
        for t in trials
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["trial", "state", "value", "last_step", "minutes", *keys])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(study_dir / "trials.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))
    done = [r for r in rows if r["state"] == "complete"]
    summary: dict[str, Any] = {
        **asdict(study),
        "counts": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
    }
    if done:
        best = opened.best_trial
        config = best_config(opened, args_type, study)
        text = f"# tune.py's best of {len(done)} finished trials: trial {best.number}, value {best.value:.1f}\n"
        text += f"# python {Path(study.script).name} --config best.yaml\n" + yaml.safe_dump(config, sort_keys=False)
        atomic_write(study_dir / "best.yaml", lambda tmp: Path(tmp).write_text(text))
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params, "config": config}
    summary["trials"] = rows
    atomic_write(study_dir / "study.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1) + "\n"))
    ranked = sorted(
        rows, key=lambda r: (r["value"] is None, -(r["value"] or 0) if study.direction == "maximize" else r["value"] or 0)
    )
    lines = ["| trial | state | value | " + " | ".join(keys) + " |", "|" + "---:|" * (3 + len(keys))]
    for r in ranked:
        cells = [str(r["trial"]), r["state"], "" if r["value"] is None else f"{r['value']:,.1f}"]
        lines.append("| " + " | ".join(cells + [cell(r[k]) for k in keys]) + " |")
    atomic_write(study_dir / "trials.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    write_figures(opened, study_dir, len(done))


def cell(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_figures(opened: optuna.Study, study_dir: Path, done: int) -> None:
    """Optuna's optimization history and parameter importances (PED-ANOVA: no scikit-learn needed)."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figures = {"history.png": lambda: optuna_plots.plot_optimization_history(opened)}
        if done >= 3 and len(opened.best_trial.params) > 1:
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            figures["importance.png"] = lambda: optuna_plots.plot_param_importances(opened, evaluator=evaluator)
        for name, draw in figures.items():
            try:
                ax = draw()
            except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few trials for the importance's quantiles
                print(f"{name} not drawn: {e}", file=sys.stderr)
                continue
            figure = ax.get_figure(root=True)
            assert figure is not None
            figure.set_size_inches(8, 4.5)
            figure.tight_layout()
            atomic_write(study_dir / name, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
            plt.close(figure)


# ---- main ----


def script_path(args: Args) -> Path:
    """--script as given, else beside tune.py."""
    return Path(args.script if Path(args.script).exists() else ROOT / args.script).resolve()


def check(args: Args, flags: list[str]) -> tuple[Study, RunArgs, type, Path]:
    """Everything checked before anything is written: the study, the script's Args made of the flags, its type, the
    study's directory."""
    script = script_path(args)
    if script.suffix != ".py" or not script.is_file():
        raise UsageError(f"--script {args.script} is not a training script file (e.g. --script ppo_continuous.py)")
    sys.path.insert(0, str(script.resolve().parent))
    args_type = import_module(script.stem).Args
    for flag in flags:
        if flag.split("=")[0] in [f"--{k.replace('_', '-')}" for k in SET_BY_TUNE]:
            raise UsageError(f"{flag} is set by tune.py for each trial; drop it from the flags after --")
    base = parse_flags(args_type, config_flags(args_type, flags) + flags)
    space = read_space(args.space, args_type)
    for key in space:
        if any(flag.split("=")[0] == f"--{key.replace('_', '-')}" for flag in flags):
            raise UsageError(f"--{key.replace('_', '-')} is searched (--space {args.space}): drop it from the flags after --")
    if base.eval_every <= 0:
        raise UsageError("trials are scored by their evaluations: pass --eval-every N > 0 after --")
    for name, low in (("n_trials", 0), ("workers", 1), ("startup_trials", 0), ("warmup_steps", 0)):
        if getattr(args, name) < low:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if not args.seeds:
        raise UsageError("--seeds is empty: give at least one seed")
    default_dir = Path("runs") / "_tune" / f"{script.stem}__{Path(args.space).stem}"
    study = Study(script.name, space, flags, list(args.seeds), args.direction)
    return study, base, args_type, Path(args.study_dir) if args.study_dir else default_dir


def stop_runs(signum: int, _frame: object) -> None:
    """A signal to tune.py stops its runs too; their trials stay `running`, and the next start runs them again."""
    for p in list(LIVE):
        p.terminate()
    os._exit(128 + signum)


def check_no_job(study_dir: Path) -> None:
    """A study whose Slurm workers are still at it is theirs: a second driver would fail their running trials."""
    job_file = study_dir / "slurm_job"
    if job_file.exists() and shutil.which("squeue"):
        job = job_file.read_text().strip()
        listed = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
        if listed.returncode == 0 and listed.stdout.strip():
            raise UsageError(f"the study's Slurm job {job} is still running: wait for it, or scancel {job}")


def submit(args: Args, study_dir: Path) -> None:
    """--slurm: --workers array tasks, each this command with --worker; they share the study's storage."""
    argv = [a for a in sys.argv[1:] if a != "--slurm"]
    cut = argv.index("--") if "--" in argv else len(argv)
    wrap = shlex.join([args.python, str(Path(__file__).resolve()), *argv[:cut], "--worker", *argv[cut:]])
    sbatch = ["sbatch", "--parsable", "--job-name=tune", f"--array=1-{args.workers}", f"--output={study_dir}/slurm-%A_%a.out"]
    out = subprocess.run([*sbatch, *args.sbatch_args.split(), "--wrap", wrap], capture_output=True, text=True)
    if out.returncode:
        raise UsageError(f"sbatch failed: {' '.join(out.stderr.split())}")
    job = out.stdout.strip().split(";")[0]
    atomic_write(study_dir / "slurm_job", lambda tmp: Path(tmp).write_text(job))
    print(f"submitted Slurm array job {job}: {args.workers} workers share {study_dir}; outputs are rewritten after each trial")


def main(args: Args, flags: list[str]) -> None:
    study, base, args_type, study_dir = check(args, flags)
    if args.slurm and not args.worker and not shutil.which("sbatch"):
        raise UsageError("sbatch not found: run on a Slurm login node, or drop --slurm to run the trials here")
    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / "lock", "w") as lock:  # one driver at a time: the recovery must not fail live trials
        if not args.worker:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"another tune.py is running the study in {study_dir}") from None
        opened = open_study(args, study, study_dir)
        if not args.worker:
            check_no_job(study_dir)
            recover(opened)
        if args.slurm and not args.worker:
            return submit(args, study_dir)
        signal.signal(signal.SIGTERM, stop_runs)

        def after_trial(opened: optuna.Study, trial: FrozenTrial) -> None:
            with WRITING:
                write_outputs(opened, study, base, args_type, study_dir)

        remaining = max(args.n_trials - finished(opened), 0)
        if remaining:
            print(f"{remaining} of {args.n_trials} trials to run, {args.workers} at a time; study in {study_dir}", flush=True)
            done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)  # the ones in flight too: no extra trials
            stop_at = optuna.study.MaxTrialsCallback(args.n_trials, states=done)

            def objective(trial: optuna.Trial) -> float:
                return run_trial(trial, study, args, base, args_type, study_dir)

            n_jobs = 1 if args.worker else args.workers
            opened.optimize(
                objective, n_trials=remaining, n_jobs=n_jobs, callbacks=[stop_at, after_trial], catch=(RuntimeError,)
            )
        write_outputs(opened, study, base, args_type, study_dir)
        if any(t.state == TrialState.COMPLETE for t in opened.trials):
            print(f"best: trial {opened.best_trial.number}, value {opened.best_value:,.1f}; {study_dir}/best.yaml")


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    captured = io.StringIO()
    try:
        from contextlib import redirect_stderr

        with redirect_stderr(captured):
            tune_args = tyro.cli(Args, args=argv[:cut], description=__doc__)
    except SystemExit as e:
        print(f"error: {tyro_message(captured.getvalue())} (see --help)" if e.code else captured.getvalue(), file=sys.stderr)
        raise
    try:
        main(tune_args, argv[cut + 1 :])
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
