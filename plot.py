"""Figures and tables of a benchmark, read from every metrics.json (and timings.jsonl) under one or more
runs directories: learning curves, GRPO group sizes, final performance, where the time goes.

Final performance is reported as rliable recommends (Agarwal et al., "Deep Reinforcement Learning
at the Edge of the Statistical Precipice", NeurIPS 2021): the interquartile mean (IQM) over runs,
with a 95% percentile confidence interval from a stratified bootstrap (runs resampled with
replacement within each task), next to the plain mean +- std over seeds.

With --x time the learning curves and the table are against wall-clock seconds instead of env steps: a run's
seconds at each step are the running sum of timings.jsonl's time_s, interpolated between its rows.

A fine-tuned run (a script's --init-from: metrics.json's init_from names the source run and its step) is its own
algorithm, labelled with its start ("grpo_continuous_g8 ← ppo_continuous 299k"), and placed on the x axis after its
source's steps (or seconds): a PPO 300k -> GRPO 700k pipeline ends at 1M, read at the same budget as PPO at 1M.
The source may be in another of the runs directories, and is used for that even where --exp or --env leave it out.

Run:  python plot.py runs/   (figures, final_performance.md and .csv go to runs/_plots/)
      python plot.py runs/ --x time   (the same against wall-clock time: curves_ENV_time.png, final_performance_time.md)
      python plot.py runs/ runs_ft/ --exp ppo_continuous --exp 'grpo_continuous_g8*' --env 'Hopper*'
          (the runs of both directories, only these algorithms and envs; files go to runs/_plots/)
"""

import argparse
import csv
import dataclasses
import fnmatch
import io
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.typing import ColorType  # noqa: E402

GRID_POINTS = 201  # the common step grid on which seeds are averaged
DEFAULT_SMOOTH_FRACTION = 0.02  # default trailing smoothing window, as a fraction of the x range
TRAIN_FINAL_FRACTION = 0.1  # a run's final training return: mean over its last 10% of steps
BOOTSTRAP_REPS = 10_000
# arguments that say how or where a run ran, or are derived, not what it computes: never a difference between configs
SETUP_ARGS = {
    *("env_id", "seed", "exp_name", "runs_dir", "resume", "cuda", "compile", "torch_threads", "torch_deterministic"),
    *("vector_mode", "capture_video", "checkpoint_every", "eval_every", "eval_episodes", "eval_checkpoint", "video_path"),
    *("track", "wandb_project_name", "wandb_entity", "total_timesteps", "batch_size", "num_iterations"),
    "config",  # where the arguments were read from: the arguments themselves tell runs apart
    "export",  # --eval-checkpoint's file, as video_path
}
UNIT = {"steps": "steps", "time": "seconds"}  # the table's budget column, in the x axis's unit
TIMING_KEYS = ("time_s", "rollout_s", "env_step_s", "update_s", "eval_s", "io_s")  # in every row of timings.jsonl


class TimePart(NamedTuple):
    """A part of an iteration's time_s, as time_breakdown's key, and as the time-breakdown figure draws it."""

    key: str
    label: str
    color: str


TIME_PARTS = [  # the disjoint parts of an iteration's time_s
    TimePart("env_step_s", "env step", "#1f77b4"),
    TimePart("policy_forward_s", "policy forward", "#9467bd"),
    TimePart("rest_s", "rest of rollout (normalization, bookkeeping)", "#c6dbef"),
    TimePart("update_s", "update", "#ff7f0e"),
    TimePart("eval_s", "eval", "#2ca02c"),
    TimePart("io_s", "io (checkpoints, logs)", "#999999"),
]

Series = tuple[np.ndarray, np.ndarray]  # (x, values): float arrays sorted by x (env steps, or seconds)
# an argument's value as metrics.json's args has it: a JSON scalar, or a list (a tuple in the script's Args)
ArgJSON = str | int | float | bool | None | list["ArgJSON"]
# the same as a dict key: lists as tuples
ArgValue = str | int | float | bool | None | tuple["ArgValue", ...]
# a row of the table: its CSV columns in order, some named only at run time (the budget's unit, each reference, the
# ratio), so a dict; the values: text, counts, numbers, or None where there is no number
TableRow = dict[str, str | int | float | None]


class UsageError(Exception):
    """A mistake the user can fix; reported as one line, exit status 2, nothing written."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class InitFrom:
    """A fine-tuned run's start, from metrics.json's init_from: the source run's directory name, script and exp_name,
    and the step and wall-clock seconds of the checkpoint it started from."""

    path: str  # the checkpoint
    run: str
    algo: str
    exp_name: str
    global_step: int
    wall_time_s: float

    def starts_at(self, x: str) -> float:
        """Where the run starts on the x axis ("steps" or "time"): its source's steps, or seconds."""
        return self.global_step if x == "steps" else self.wall_time_s


@dataclasses.dataclass
class Run:
    path: Path  # the run directory
    env: str
    exp: str  # exp_name: what the figures and the table call an algorithm (with its start and config: label_configs)
    algo: str  # the script's stem
    seed: int
    group_size: int | None
    status: str
    global_step: float  # on the x axis: env steps, or seconds (on_axis)
    total_timesteps: float  # likewise; 0 on the time axis, where no budget is known before the end
    sps: float
    series: dict[str, Series]  # "eval" / "train" -> (x, returns), sorted by x: steps, or seconds (on_axis)
    args: dict[str, Any]  # the run's arguments, as metrics.json has them
    init_from: InitFrom | None = None  # a fine-tuned run's start (read_init_from); None from scratch
    exp_name: str = ""  # metrics.json's exp_name, as it is (--exp matches it, or exp)
    prefix: dict[str, Series] = dataclasses.field(default_factory=dict)  # its source's points before it started (place_runs)


def hashable(value: ArgJSON) -> ArgValue:
    """An argument's value as a dict key: JSON lists (tuples in Args) become tuples."""
    return tuple(hashable(v) for v in value) if isinstance(value, list) else value


def short_steps(steps: float, digits: int = 6) -> str:
    """1.5M, 299k, 512: a step count in `digits` significant digits."""
    scale, suffix = (1e6, "M") if abs(steps) >= 1e6 else (1e3, "k") if abs(steps) >= 1e3 else (1, "")
    return f"{steps / scale:.{digits}g}{suffix}"


def differing_args(runs: Sequence[Run]) -> list[str]:
    """The arguments, apart from SETUP_ARGS, whose values differ between the runs that have them (a run older than an
    argument does not have it)."""
    keys = sorted({k for r in runs for k in r.args} - SETUP_ARGS)
    return [k for k in keys if len({hashable(r.args[k]) for r in runs if k in r.args}) > 1]


def config_names(name: str, group: Sequence[Run], ignore: Container[str] = ()) -> list[str]:
    """Each run's name within `group`: `name`, plus the arguments (but `ignore`) in which it differs from the others, as
    `name (adv_mode=step)`; a value most of the group shares goes unsaid (a sweep's base config keeps the bare name)."""
    common: dict[str, ArgValue] = {}
    for k in differing_args(group):
        if k not in ignore:
            counts = Counter(hashable(r.args[k]) for r in group if k in r.args).most_common()
            common[k] = counts[0][0] if counts[0][1] > counts[1][1] else None
    said = [
        [f"{k}={hashable(r.args[k])}" for k, v in common.items() if k in r.args and hashable(r.args[k]) != v] for r in group
    ]
    return [f"{name} ({', '.join(s)})" if s else name for s in said]


def label_configs(runs: list[Run]) -> list[Run]:
    """Runs with one exp_name but other arguments (e.g. `--adv-mode step` runs next to `episode` ones) are different
    algorithms: each exp gets its config_names."""
    for exp in {r.exp for r in runs}:
        group = [r for r in runs if r.exp == exp]
        for r, label in zip(group, config_names(exp, group)):
            r.exp = label
    return runs


# ---- reading ----


def read_series(metrics: dict[str, Any], key: str, value_key: str) -> Series:
    part = metrics[key]
    steps, values = np.asarray(part["global_step"], dtype=float), np.asarray(part[value_key], dtype=float)
    if steps.ndim != 1 or steps.shape != values.shape:
        raise ValueError(f"{key}.global_step and {key}.{value_key} differ in length")
    keep = np.isfinite(steps) & np.isfinite(values)
    order = np.argsort(steps[keep], kind="stable")
    return steps[keep][order], values[keep][order]


def read_init_from(metrics: dict[str, Any]) -> InitFrom | None:
    """A fine-tuned run's start, from metrics.json's init_from (None from scratch)."""
    init = metrics.get("init_from")
    if init is None:
        return None
    return InitFrom(
        path=str(init.get("path") or ""),
        run=str(init.get("run") or ""),
        algo=str(init.get("algo") or init["exp_name"]),
        exp_name=str(init["exp_name"]),
        global_step=int(init["global_step"]),
        wall_time_s=float(init["wall_time_s"]),
    )


def load_run(path: Path) -> Run:
    """One metrics.json; a ValueError says what is wrong with it."""
    text = path.read_text()
    if not text.strip():
        raise ValueError("empty file")
    metrics = json.loads(text)  # json.JSONDecodeError is a ValueError
    if not isinstance(metrics, dict):
        raise ValueError("not a JSON object")
    try:
        group_size = metrics.get("group_size")
        init = read_init_from(metrics)
        args = {**({"group_size": group_size} if group_size is not None else {}), **(metrics.get("args") or {})}
        # a fine-tuned run is another algorithm than its script from scratch: its start goes into its name; and in place
        # of its checkpoint path (one per seed), its source's exp_name is the argument that tells two sources apart
        origin = f" ← {init.algo} {short_steps(init.global_step, 3)}" if init else ""
        if init or "init_from" in args:
            args["init_from"] = init.exp_name if init else None
        return Run(
            path=path.parent,
            env=str(metrics["env_id"]),
            exp=str(metrics["exp_name"]) + origin,
            algo=str(metrics.get("algo") or metrics["exp_name"]) + origin,
            seed=int(metrics["seed"]),
            group_size=None if group_size is None else int(group_size),
            status=str(metrics.get("status", "?")),
            global_step=int(metrics.get("global_step") or 0),
            total_timesteps=int(metrics.get("total_timesteps") or 0),
            sps=float(metrics.get("sps") or 0.0),
            series={
                "eval": read_series(metrics, "eval", "mean_return"),
                "train": read_series(metrics, "train", "episodic_return"),
            },
            args=args,
            init_from=init,
            exp_name=str(metrics["exp_name"]),
        )
    except KeyError as e:
        raise ValueError(f"no {e.args[0]!r} field")
    except (TypeError, AttributeError) as e:
        raise ValueError(f"malformed field ({e})")


def load_runs(*runs_dirs: Path) -> list[Run]:
    """Every readable metrics.json under the runs_dirs (bad ones are skipped with a warning; a file under two of them,
    read once); of two runs with the same env, exp_name, seed and arguments (copies in two folders) the one with more
    steps is kept."""
    paths: dict[Path, Path] = {}
    for runs_dir in runs_dirs:
        for path in sorted(runs_dir.rglob("metrics.json")):
            paths.setdefault(path.resolve(), path)
    runs: dict[tuple[str, str, int, tuple[tuple[str, ArgValue], ...]], Run] = {}
    for path in paths.values():
        try:
            run = load_run(path)
        except (OSError, ValueError) as e:
            warn(f"skipping {path}: {e}")
            continue
        config = tuple(sorted((k, hashable(v)) for k, v in run.args.items() if k not in SETUP_ARGS))
        key = (run.env, run.exp, run.seed, config)
        if key in runs:
            warn(
                f"{run.path} and {runs[key].path} are the same run ({run.env}, {run.exp}, seed {run.seed}); "
                "using the one with more steps"
            )
            if run.global_step <= runs[key].global_step:
                continue
        runs[key] = run
    return label_configs(list(runs.values()))


@dataclasses.dataclass(frozen=True)
class Reference:
    """An external figure to compare with: a row of --reference's CSV."""

    env: str
    metric: str  # eval or train
    name: str
    mean: float
    std: float | None


def load_references(path: Path) -> list[Reference]:
    """External figures to compare with (e.g. another library's published results): a CSV with the columns env,
    metric (eval or train), name, mean and, optionally, std."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"cannot read --reference {path} ({e})")
    refs = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            ref = Reference(
                env=row["env"],
                metric=row["metric"],
                name=row["name"],
                mean=float(row["mean"]),
                std=float(row["std"]) if row.get("std") else None,
            )
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"--reference {path}, line {i}: needs env, metric, name, a numeric mean (and std)")
        if ref.metric not in ("eval", "train") or not (ref.env and ref.name):
            raise UsageError(f"--reference {path}, line {i}: metric must be eval or train, env and name non-empty")
        refs.append(ref)
    return refs


def read_timings(run_dir: Path) -> list[dict[str, float]]:
    rows: list[dict[str, float]] = []
    try:
        lines = (run_dir / "timings.jsonl").read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
            timed = {k: float(row[k]) for k in TIMING_KEYS}
            timed |= {k: float(row[k]) for k in ("policy_forward_s", "global_step") if k in row}  # not in older runs
            rows.append(timed)
        except (ValueError, KeyError, TypeError):  # a line cut by kill -9, or not ours
            continue
    return rows


# ---- the x axis: env steps or wall-clock seconds, after a fine-tuned run's source ----


def elapsed_seconds(run_dir: Path) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function from a run's steps to its seconds since it started: the running sum of timings.jsonl's time_s (all
    phases of an iteration) at each row's global_step, interpolated in between. None without rows that have a step."""
    rows = read_timings(run_dir)
    if not rows or any("global_step" not in row for row in rows):  # a row without its step: its seconds have no place
        return None
    steps = np.array([0.0] + [row["global_step"] for row in rows])
    seconds = np.cumsum([0.0] + [row["time_s"] for row in rows])
    return lambda x: np.interp(x, steps, seconds)


def on_axis(run: Run, x: str) -> Run | None:
    """A copy of `run` with its series, global_step and total_timesteps on the x axis ("steps" or "time": seconds by
    elapsed_seconds), after its source's steps or seconds if it is fine-tuned. None for "time" without timings."""
    offset = run.init_from.starts_at(x) if run.init_from else 0
    if x == "steps":
        return dataclasses.replace(
            run,
            series={metric: (steps + offset, values) for metric, (steps, values) in run.series.items()},
            global_step=run.global_step + offset,
            total_timesteps=run.total_timesteps + offset,
        )
    to_seconds = elapsed_seconds(run.path)
    if to_seconds is None:
        return None
    return dataclasses.replace(
        run,
        series={metric: (to_seconds(steps) + offset, values) for metric, (steps, values) in run.series.items()},
        global_step=to_seconds(np.array([run.global_step]))[0] + offset,
        total_timesteps=0,
    )


def find_source(run: Run, candidates: Iterable[Run]) -> Run | None:
    """The run a fine-tuned `run` started from, among `candidates`: the one whose directory is named init_from.run (of
    copies in several folders, the one whose directory holds the checkpoint); None if not there, or not one."""
    init = run.init_from
    if init is None:  # from scratch
        return None
    named = [c for c in candidates if c.path.name == init.run and c.env == run.env and c is not run]
    if len(named) > 1:
        checkpoint = Path(init.path).resolve()
        named = [c for c in named if c.path.resolve() in checkpoint.parents]
    return named[0] if len(named) == 1 else None


def place_runs(runs: Sequence[Run], x: str, others: Sequence[Run] = ()) -> list[Run]:
    """Every run on the x axis (on_axis); runs without timings are left out of "time", with a warning. A fine-tuned
    run whose source is here, or among `others` (runs not plotted, e.g. left out by --exp), gets, as its prefix, the
    source's points up to the step it started from, so that the pipeline's curve runs from 0 (plot_curves draws it;
    the table reads the run's own points only)."""
    pool = {id(r): r for r in [*runs, *others]}
    placed = {key: on for key, run in pool.items() if (on := on_axis(run, x)) is not None}  # None: left out
    for run in runs:
        if id(run) not in placed:
            warn(f"skipping {run.path} for --x time: no timings.jsonl with a global_step in each row")
    sources = [r for key, r in pool.items() if key in placed]
    for run in runs:
        source = find_source(run, sources) if run.init_from and id(run) in placed else None
        if run.init_from and source:
            # on_axis keeps the order of a series: the source's own steps pick its points on the axis
            started = {metric: steps <= run.init_from.global_step for metric, (steps, _) in source.series.items()}
            axis = placed[id(source)].series
            placed[id(run)].prefix = {metric: (xs[started[metric]], ys[started[metric]]) for metric, (xs, ys) in axis.items()}
    return [placed[id(r)] for r in runs if id(r) in placed]


def typed(name: str) -> str:
    """An algorithm's name as typed: '<-' may stand for a fine-tuned run's '←'."""
    return name.replace("<-", "←")


# what --exp and --env match a glob against, and how an error calls it
FILTERS: dict[str, tuple[str, Callable[[Run], tuple[str, ...]]]] = {
    "exp": ("exp_name or algorithm", lambda run: (run.exp_name, run.exp)),
    "env": ("env_id", lambda run: (run.env,)),
}


def matches(run: Run, flag: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, glob) for name in FILTERS[flag][1](run) for glob in globs)


def select(runs: Sequence[Run], globs: Mapping[str, Sequence[str]]) -> list[Run]:
    """The runs that match, for each flag of FILTERS, one of its globs (`globs`: flag -> globs; none: every run); a glob
    that matches none of `runs` is a UsageError."""
    for flag, patterns in globs.items():
        for glob in patterns:
            if not any(matches(r, flag, [glob]) for r in runs):
                raise UsageError(f"--{flag} {glob}: matches no run's {FILTERS[flag][0]} (globs: *, ?, [...]; quote them)")
    return [r for r in runs if all(matches(r, flag, patterns) for flag, patterns in globs.items() if patterns)]


def curve(run: Run, metric: str) -> Series:
    """A run's points of `metric`, after its prefix (place_runs) if it has one."""
    if metric not in run.prefix:
        return run.series[metric]
    (prefix_x, prefix_y), (own_x, own_y) = run.prefix[metric], run.series[metric]
    return np.concatenate((prefix_x, own_x)), np.concatenate((prefix_y, own_y))


# ---- statistics ----


def smooth(steps: np.ndarray, values: np.ndarray, window: float) -> np.ndarray:
    """Trailing mean over the points in (step - window, step]."""
    if window <= 0 or len(values) < 2:
        return values
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    lo = np.searchsorted(steps, steps - window, side="right")
    hi = np.arange(1, len(values) + 1)
    return (cumsum[hi] - cumsum[lo]) / (hi - lo)


def on_grid(steps: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation on the grid, NaN outside the run's steps (a run in progress ends early)."""
    out = np.full(len(grid), np.nan)
    if len(steps) == 0:
        return out
    inside = (grid >= steps[0]) & (grid <= steps[-1])
    if not inside.any():  # a single point between two grid points: put it on the nearest one
        inside[np.argmin(np.abs(grid - steps[-1]))] = True
        out[inside] = values[-1]
        return out
    out[inside] = np.interp(grid[inside], steps, values)
    return out


def seed_bands(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, std, min and max over seeds (rows), only where every seed has a value: a mean over
    fewer seeds near the end of a run in progress would jump to whichever seed is ahead."""
    return curves.mean(0), curves.std(0), curves.min(0), curves.max(0)


def final_return(run: Run, metric: str, total_steps: float) -> float | None:
    """The last evaluation at or before total_steps; for `train`, the mean episodic return over the
    last TRAIN_FINAL_FRACTION of total_steps before the run's last episode. None without data."""
    steps, values = run.series[metric]
    values, steps = values[steps <= total_steps], steps[steps <= total_steps]
    if len(values) == 0:
        return None
    if metric == "eval":
        return float(values[-1])
    return float(values[steps > steps[-1] - TRAIN_FINAL_FRACTION * total_steps].mean())


def iqm(scores: Sequence[float] | np.ndarray, axis: int | None = None) -> np.float64 | np.ndarray:
    """Interquartile mean: the mean of the middle 50% (scipy.stats.trim_mean(x, 0.25), as rliable)."""
    scores = np.sort(np.asarray(scores, dtype=float).reshape(-1) if axis is None else np.asarray(scores, dtype=float), axis=-1)
    n = scores.shape[-1]
    cut = int(0.25 * n)
    return scores[..., cut : n - cut].mean(axis=-1)


def stratified_bootstrap_ci(
    strata: Sequence[Sequence[float] | np.ndarray], reps: int = BOOTSTRAP_REPS, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile CI of the IQM over all runs, resampling runs with replacement within each
    stratum (task): rliable's StratifiedBootstrap. `strata` is a list of 1-d score arrays."""
    rng = np.random.default_rng(seed)
    resampled = np.concatenate([np.asarray(s, float)[rng.integers(0, len(s), size=(reps, len(s)))] for s in strata], axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(iqm(resampled, axis=-1), [tail, 100 - tail])
    return float(low), float(high)


def sort_key(value: ArgValue) -> tuple[int, float, str]:
    """Numbers first, ascending; then anything else by its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, str(value))


def sweep_points(runs: Sequence[Run], arg: str, metric: str, budget: float) -> dict[str, list[tuple[ArgValue, list[float]]]]:
    """Final returns against the value of `arg`: {config: [(value, [final return of each seed])]}, values in order. A
    config is the script and every other argument that differs between its runs here (config_names)."""
    configs: dict[str, dict[ArgValue, list[float]]] = {}
    for algo in sorted({r.algo for r in runs}):
        family = sorted((r for r in runs if r.algo == algo), key=lambda r: r.seed)
        for r, label in zip(family, config_names(algo, family, ignore=(arg,))):
            final = final_return(r, metric, budget)
            if final is not None:
                configs.setdefault(label, {}).setdefault(hashable(r.args.get(arg)), []).append(final)
    return {label: sorted(points.items(), key=lambda p: sort_key(p[0])) for label, points in configs.items()}


# ---- the table ----


def exp_order(runs: Iterable[Run]) -> list[str]:
    """Algorithms in a stable order: by script, then GRPO group size."""
    keys = {(r.algo, r.group_size or 0, r.exp) for r in runs}
    return [exp for _, _, exp in sorted(keys)]


def final_table(runs: Sequence[Run], metric: str, budgets: Mapping[str, float], x: str = "steps") -> list[TableRow]:
    rows = []
    for env in sorted(budgets):
        for exp in exp_order([r for r in runs if r.env == env]):
            group = [r for r in runs if r.env == env and r.exp == exp]
            finals = np.array([f for f in (final_return(r, metric, budgets[env]) for r in group) if f is not None])
            row: TableRow = {
                "env": env,
                "algorithm": exp,
                "group_size": group[0].group_size,
                "seeds": len(finals),
                "completed": sum(r.status == "completed" for r in group),
                "runs": len(group),
                UNIT[x]: budgets[env],
                "final_mean": None,
                "final_std": None,
                "iqm": None,
                "iqm_ci_low": None,
                "iqm_ci_high": None,
                "sps": float(np.mean([r.sps for r in group])),
            }
            if len(finals):
                row.update(final_mean=float(finals.mean()), final_std=float(finals.std()), iqm=float(iqm(finals)))
                row["iqm_ci_low"], row["iqm_ci_high"] = stratified_bootstrap_ci([finals])
            rows.append(row)
    return rows


def with_references(rows: list[TableRow], refs: Sequence[Reference]) -> list[str]:
    """Each row gets, per reference name, the reference's mean and std for the row's env (None where it has none)."""
    names = list(dict.fromkeys(ref.name for ref in refs))
    for row in rows:
        for name in names:
            match = [ref for ref in refs if ref.name == name and ref.env == row["env"]]
            row[f"{name} mean"], row[f"{name} std"] = (match[0].mean, match[0].std) if match else (None, None)
    return names


def with_ratios(rows: list[TableRow], to: str) -> None:
    """Each row's final mean as a fraction of algorithm `to`'s in the same env (None where `to` has none there, or <= 0)."""
    base = {row["env"]: row["final_mean"] for row in rows if row["algorithm"] == to}
    for row in rows:
        b, mean = base.get(row["env"]), row["final_mean"]
        # final_mean: a float, or None without a final return (final_table)
        row[f"ratio_to_{to}"] = mean / b if isinstance(mean, float) and isinstance(b, float) and b > 0 else None


def table_markdown(
    rows: Sequence[TableRow], metric: str, ref_names: Sequence[str] = (), ratio_to: str | None = None, x: str = "steps"
) -> str:
    unit = UNIT[x]
    what = (
        "return of the last evaluation"
        if metric == "eval"
        else f"training return over the last {TRAIN_FINAL_FRACTION:.0%} of {'steps' if x == 'steps' else 'the time'}"
    )
    budget = "`steps`" if x == "steps" else "`seconds` of wall-clock time (the running sum of timings.jsonl's time_s)"
    lines = [
        f"Final performance: {what} at or before {budget}, over seeds. IQM: interquartile mean with a 95% "
        "stratified-bootstrap confidence interval (Agarwal et al., 2021). `completed`: finished runs / runs (a run "
        "still running or diverged counts with its latest value).",
        "",
        f"| env | algorithm | {unit} | seeds | completed | final return (mean ± std) | IQM [95% CI] | SPS |"
        + "".join(f" {name} |" for name in ref_names)
        + (f" % of {ratio_to} |" if ratio_to else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(ref_names) + bool(ratio_to)),
    ]
    for r in rows:
        final = f"{r['final_mean']:.1f} ± {r['final_std']:.1f}" if r["seeds"] else "–"
        ci = f"{r['iqm']:.1f} [{r['iqm_ci_low']:.1f}, {r['iqm_ci_high']:.1f}]" if r["seeds"] else "–"
        refs = [(r[f"{name} mean"], r[f"{name} std"]) for name in ref_names]
        extra = ["–" if m is None else f"{m:.0f}" if s is None else f"{m:.0f} ± {s:.0f}" for m, s in refs]
        if ratio_to:
            ratio = r[f"ratio_to_{ratio_to}"]
            extra.append("–" if ratio is None else f"{ratio:.0%}")
        lines.append(
            f"| {r['env']} | {r['algorithm']} | {r[unit]:,.0f} | {r['seeds']} | {r['completed']}/{r['runs']} "
            f"| {final} | {ci} | {r['sps']:,.0f} |" + "".join(f" {cell} |" for cell in extra)
        )
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[TableRow]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return out.getvalue()


# ---- figures ----


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def steps_formatter() -> matplotlib.ticker.FuncFormatter:
    return matplotlib.ticker.FuncFormatter(lambda x, _: short_steps(x))


def plot_curves(
    ax: Axes,
    runs: Sequence[Run],
    metric: str,
    grid: np.ndarray,
    window: float,
    label: str,
    color: ColorType,
    min_max: bool = True,
) -> bool:
    """Mean over seeds on the grid, a std band and (lighter) a min/max band. False if no data."""
    curves = np.array([on_grid(s, smooth(s, v, window), grid) for s, v in (curve(r, metric) for r in runs) if len(s)])
    if not len(curves):
        return False
    mean, std, low, high = seed_bands(curves)
    few = np.isfinite(mean).sum() < 3  # a line needs points: mark them
    ax.plot(
        grid, mean, color=color, label=f"{label} ({len(curves)} seed{'s' * (len(curves) > 1)})", marker="o" if few else None
    )
    ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.25, linewidth=0)
    if min_max:
        ax.fill_between(grid, low, high, color=color, alpha=0.08, linewidth=0)
    return True


def draw_references(ax: Axes, refs: Sequence[Reference]) -> bool:
    """A reference's final figure as a dashed line (and its std as a faint band) across the axis."""
    for k, ref in enumerate(refs):
        color = plt.get_cmap("Dark2")(k % 8)
        std = f" ± {ref.std:.0f}" if ref.std is not None else ""
        ax.axhline(ref.mean, color=color, linestyle="--", linewidth=1.5, label=f"{ref.name}: {ref.mean:.0f}{std}")
        if ref.std is not None:
            ax.axhspan(ref.mean - ref.std, ref.mean + ref.std, color=color, alpha=0.07, linewidth=0)
    return bool(refs)


class TimeLocator(matplotlib.ticker.MaxNLocator):
    """Round ticks in a unit of `scale` seconds: 10 min, not 600 s or 8.33 min."""

    def __init__(self, scale: float) -> None:
        super().__init__(nbins="auto", steps=[1, 2, 2.5, 5, 10])
        self.scale = scale

    # an ndarray, as MaxNLocator's (matplotlib's stubs say Locator.tick_values gives a Sequence[float], which an ndarray
    # is not, though matplotlib's callers of a locator index the ticks as an array)
    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:  # type: ignore[override]
        return np.asarray(super().tick_values(vmin / self.scale, vmax / self.scale)) * self.scale


def style_axis(ax: Axes, title: str, has_data: bool, empty_text: str, x: str = "steps") -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("env steps" if x == "steps" else "wall-clock time")
    if x == "steps":
        ax.xaxis.set_major_formatter(steps_formatter())
    else:  # one unit on every tick, the one that suits the axis's end
        scale, unit = time_unit(ax.get_xlim()[1])
        ax.xaxis.set_major_locator(TimeLocator(scale))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / scale:g} {unit}"))
    ax.grid(alpha=0.3)
    if has_data:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", transform=ax.transAxes, color="gray")


def curves_panel(
    ax: Axes,
    env: str,
    runs: Sequence[Run],
    metric: str,
    budget: float,
    window: float,
    colors: Mapping[str, ColorType],
    refs: Sequence[Reference],
    title: str,
    x: str,
) -> None:
    """One env's `metric` curves of every algorithm in `runs`, and the references for that env and metric."""
    grid = np.linspace(0, budget, GRID_POINTS)
    drawn = [
        plot_curves(ax, [r for r in runs if r.exp == exp], metric, grid, window, exp, colors[exp]) for exp in exp_order(runs)
    ]
    drawn.append(draw_references(ax, [ref for ref in refs if ref.env == env and ref.metric == metric]))
    style_axis(ax, title, any(drawn), f"no {metric} data in these runs", x)
    ax.set_ylabel("return")


def figure_learning_curves(
    env: str,
    runs: Sequence[Run],
    budget: float,
    window: float,
    colors: Mapping[str, ColorType],
    refs: Sequence[Reference] = (),
    x: str = "steps",
) -> Figure:
    span = f"{window:,.0f} steps" if x == "steps" else duration(window)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, metric, title in (
        (axes[0], "eval", "evaluation return (deterministic policy)"),
        (axes[1], "train", f"training episodic return (trailing mean over {span})"),
    ):
        curves_panel(ax, env, runs, metric, budget, window, colors, refs, title, x)
    fig.suptitle(f"{env}: mean over seeds, ±1 std (dark band), min-max (light band)", fontsize=11)
    return fig


def figure_env_grid(
    runs: Sequence[Run],
    metric: str,
    budgets: Mapping[str, float],
    windows: Mapping[str, float],
    colors: Mapping[str, ColorType],
    refs: Sequence[Reference] = (),
    x: str = "steps",
) -> Figure:
    """Every env in one figure: the `metric` curves of every algorithm, with the references."""
    envs = sorted(budgets)
    cols = 2 if len(envs) == 4 else min(len(envs), 3)
    rows = math.ceil(len(envs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax, env in zip(axes.flat, envs):
        env_runs = [r for r in runs if r.env == env]
        curves_panel(ax, env, env_runs, metric, budgets[env], windows[env], colors, refs, env, x)
    for ax in axes.flat[len(envs) :]:
        ax.axis("off")
    what = "evaluation return" if metric == "eval" else "training episodic return"
    fig.suptitle(f"{what}: mean over seeds, ±1 std (dark band), min-max (light band)", fontsize=11)
    fig.tight_layout()
    return fig


def crossings(xs: Sequence[float], a: Sequence[float], b: Sequence[float], log: bool = False) -> list[float]:
    """Where line a crosses line b (both at xs, in order): linearly interpolated between neighbours, on a log2 x axis in
    log2(x). A tie at a point is a crossing there only if the sign differs on both sides."""
    to_x = (lambda u: 2.0**u) if log else (lambda u: u)
    us = [math.log2(x) for x in xs] if log else list(xs)
    d = [p - q for p, q in zip(a, b)]
    found = []
    for i in range(len(d) - 1):
        if d[i] * d[i + 1] < 0:
            found.append(to_x(us[i] + (us[i + 1] - us[i]) * d[i] / (d[i] - d[i + 1])))
        elif d[i + 1] == 0 and i + 2 < len(d) and d[i] * d[i + 2] < 0:
            found.append(to_x(us[i + 1]))
    return found


def sweep_panel(
    ax: Axes, runs: Sequence[Run], arg: str, metric: str, budget: float, baselines: Sequence[tuple[str, float]] = ()
) -> bool:
    """Final return against the value of `arg`: a line per config (sweep_points), its IQM with the 95% bootstrap CI at
    each value, each seed a dot; a log2 axis for positive numbers spanning 8x or more; baselines as dashed lines."""
    points = sweep_points(runs, arg, metric, budget)
    values = sorted({v for pts in points.values() for v, _ in pts}, key=sort_key)
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]  # sort_key's numbers
    numeric = len(numbers) == len(values)
    log = numeric and bool(numbers) and min(numbers) > 0 and max(numbers) >= 8 * min(numbers)
    x_of: dict[ArgValue, float] = dict(zip(values, numbers)) if numeric else {v: i for i, v in enumerate(values)}
    spread = (max(numbers) - min(numbers) or 1) if numeric and numbers else 1
    for k, (label, pts) in enumerate(points.items()):
        color = plt.get_cmap("tab10")(k % 10)
        xs, centers = [x_of[v] for v, _ in pts], np.array([iqm(finals) for _, finals in pts])
        cis = np.array([stratified_bootstrap_ci([finals]) for _, finals in pts]).reshape(-1, 2)
        errors = [centers - cis[:, 0], cis[:, 1] - centers]
        ax.errorbar(xs, centers, yerr=errors, fmt="o-", color=color, capsize=4, markersize=7, label=label)
        for x, (_, finals) in zip(xs, pts):
            offsets = np.linspace(-0.06, 0.06, len(finals)) if len(finals) > 1 else np.zeros(1)
            ax.scatter(x * 2**offsets if log else x + offsets * spread, finals, color=color, alpha=0.4, s=15)
    if len(points) == 2:  # two algorithms: where one overtakes the other (e.g. PPO and GRPO against --reward-delay)
        a, b = points.values()
        shared = [v for v, _ in a if v in {w for w, _ in b}]
        at = {v: float(iqm(finals)) for v, finals in a}, {v: float(iqm(finals)) for v, finals in b}
        found = crossings([x_of[v] for v in shared], [at[0][v] for v in shared], [at[1][v] for v in shared], log)
        for k, x in enumerate(found):
            ax.axvline(x, color="black", linestyle=":", linewidth=1.5, label="crossing" if k == 0 else None)
    for k, (name, value) in enumerate(baselines):
        ax.axhline(value, color=plt.get_cmap("Dark2")(k % 8), linestyle="--", linewidth=1.5, label=f"{name} (IQM)")
    if log:
        ax.set_xscale("log", base=2)
    ax.set_xticks([x_of[v] for v in values], [str(v) for v in values])
    ax.minorticks_off()
    ax.set_xlabel(arg)
    ax.set_ylabel(f"final {metric} return")
    ax.set_title(f"final {metric} return vs {arg} (IQM, 95% bootstrap CI; dots: seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    if points or baselines:
        ax.legend(fontsize=8)
    return bool(points)


def figure_sweep(env: str, runs: Sequence[Run], arg: str, metric: str, budget: float) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 5))
    if not sweep_panel(ax, runs, arg, metric, budget):
        ax.text(0.5, 0.5, f"no {metric} data", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.suptitle(f"{env}: sensitivity to {arg}", fontsize=11)
    return fig


def figure_group_sizes(
    env: str, runs: Sequence[Run], metric: str, budget: float, window: float, baselines: Sequence[tuple[str, float]]
) -> Figure:
    """GRPO at each group size G: the curves of each config, and the final return vs G (sweep_panel)."""
    families = sorted({r.algo for r in runs})
    fig, axes = plt.subplots(len(families), 2, figsize=(13, 4.5 * len(families)), squeeze=False)
    grid = np.linspace(0, budget, GRID_POINTS)
    for (ax_curves, ax_final), algo in zip(axes, families):
        family = [r for r in runs if r.algo == algo]
        exps = sorted({r.exp for r in family}, key=lambda e: (min(r.group_size or 0 for r in family if r.exp == e), e))
        colors = plt.get_cmap("viridis")(np.linspace(0, 0.8, len(exps)))
        drawn = [
            plot_curves(ax_curves, [r for r in family if r.exp == e], metric, grid, window, e, c, min_max=False)
            for e, c in zip(exps, colors)
        ]
        style_axis(ax_curves, f"{algo}: {metric} return (mean ± std over seeds)", any(drawn), f"no {metric} data")
        sweep_panel(ax_final, family, "group_size", metric, budget, baselines)
        ax_final.set_xlabel("group size G")
    fig.suptitle(f"{env}: GRPO group sizes", fontsize=11)
    return fig


def time_unit(seconds: float) -> tuple[int, str]:
    """The unit to say `seconds` in, as (seconds per unit, name): s below 2 min, min below 2 h, then h."""
    return (1, "s") if seconds < 120 else (60, "min") if seconds < 7200 else (3600, "h")


def duration(seconds: float) -> str:
    scale, unit = time_unit(seconds)
    return f"{seconds / scale:.{1 if unit == 'h' else 0}f} {unit}"


def time_breakdown(rows: Sequence[Mapping[str, float]]) -> dict[str, float | None]:
    """Seconds per TIME_PARTS key summed over timings rows. Policy forward is None (not timed: it stays in the rest
    of the rollout) unless every row has it."""
    total = {k: sum(row[k] for row in rows) for k in TIMING_KEYS}
    timed = all("policy_forward_s" in row for row in rows)
    policy = sum(row["policy_forward_s"] for row in rows) if timed else None
    rest = max(0.0, total["rollout_s"] - total["env_step_s"] - (policy or 0.0))
    return total | {"policy_forward_s": policy, "rest_s": rest}


def figure_time_breakdown(runs: Sequence[Run]) -> Figure | None:
    """Share of wall time per part of an iteration, per algorithm (all its runs, all envs)."""
    shares: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    for exp in exp_order(runs):
        group = [r for r in runs if r.exp == exp]
        rows = [row for r in group for row in read_timings(r.path)]
        if not rows:
            continue
        total = time_breakdown(rows)
        parts = np.array([np.nan if total[part.key] is None else total[part.key] for part in TIME_PARTS])
        shares[exp] = 100 * parts / max(np.nansum(parts), 1e-12)  # nan: not timed, no segment
        envs = ", ".join(sorted({r.env for r in group}))
        untimed = ", policy forward not timed (in rest)" if total["policy_forward_s"] is None else ""
        notes[exp] = (
            f"rollout {np.nansum(shares[exp][:3]):.0f}%{untimed}, {np.mean([r.sps for r in group]):,.0f} SPS, "
            f"{duration(sum(row['time_s'] for row in rows))} in all ({envs})"
        )
    if not shares:
        return None
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.55 * len(shares)))
    names = list(shares)[::-1]
    left = np.zeros(len(names))
    for j, part in enumerate(TIME_PARTS):
        widths = np.nan_to_num([shares[n][j] for n in names])
        ax.barh(names, widths, left=left, color=part.color, label=part.label, edgecolor="white", linewidth=0.5)
        for y, (x0, w) in enumerate(zip(left, widths)):
            if w >= 6:
                ax.text(x0 + w / 2, y, f"{w:.0f}%", ha="center", va="center", fontsize=8)
        left += widths
    for y, name in enumerate(names):
        ax.text(101, y, notes[name], va="center", fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of wall time (%), from timings.jsonl; env step + policy forward + rest = rollout")
    ax.set_title("Where the time goes", fontsize=11, pad=24)
    ax.legend(ncol=len(TIME_PARTS), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return fig


# ---- main ----


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, like every other bad input
        raise UsageError(f"{message} (see python plot.py --help)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = Parser(
        description="Figures and tables of the runs under RUNS_DIR and any further RUNS_DIRs (every metrics.json below "
        "them, read together, grouped by env and exp_name; a fine-tuned run, from a script's --init-from, is its own "
        "algorithm, named after its start, e.g. 'grpo_continuous_g8 ← ppo_continuous 299k', and placed on the x axis "
        "after its source, wherever that is among the RUNS_DIRs): curves_ENV.png, "
        "curves_all_envs.png (with more than one env), group_size_ENV.png (GRPO runs), time_breakdown.png, "
        "final_performance.md (also printed) and final_performance.csv; with --x time curves_ENV_time.png, "
        "curves_all_envs_time.png, final_performance_time.md and .csv only."
    )
    parser.add_argument(
        "runs_dirs",
        nargs="+",
        metavar="RUNS_DIR",
        help="a directory the training scripts wrote their runs to (searched recursively); several: their runs together",
    )
    parser.add_argument(
        "--output-dir", metavar="DIR", help="where the figures and tables go (default: the first RUNS_DIR's _plots)"
    )
    for flag, what in (("exp", "exp_name, or algorithm name in the table ('<-' for '←'),"), ("env", "env_id")):
        parser.add_argument(
            f"--{flag}",
            action="append",
            default=[],
            metavar="GLOB",
            help=f"only the runs whose {what} matches GLOB (fnmatch: *, ?, [...]; quote it); repeat for "
            "more, a run matching any; a fine-tuned run's source left out still starts its curve",
        )
    parser.add_argument(
        "--x",
        choices=("steps", "time"),
        default="steps",
        help="the x axis of the learning curves and the table's budget: env steps, or wall-clock seconds (time: the "
        "running sum of timings.jsonl's time_s at each step; runs without timings.jsonl are left out, with a warning); "
        "default steps",
    )
    parser.add_argument(
        "--total-steps",
        type=int,
        metavar="N",
        help="the x range and the step at which final returns are read (default: per env, the largest "
        "total_timesteps of its runs; a fine-tuned run's counted from 0, its source's steps first)",
    )
    parser.add_argument(
        "--total-time",
        type=float,
        metavar="SECONDS",
        help="with --x time: the x range and the second at which final returns are read "
        "(default: per env, the longest wall-clock time of its runs)",
    )
    parser.add_argument(
        "--metric",
        choices=("eval", "train"),
        default="eval",
        help="what the table and the group-size analysis report: the last evaluation return (eval) or the "
        f"training return over the last {TRAIN_FINAL_FRACTION * 100:.0f}%% of steps (train); default eval",
    )
    parser.add_argument(
        "--reference",
        metavar="CSV",
        help="external figures to compare with, a CSV with the columns env, metric (eval or train), name, mean and "
        "std: a column per name in the table (the rows of --metric), a dashed line in the curves",
    )
    parser.add_argument(
        "--ratio-to",
        metavar="ALGO",
        help="a column of each row's final mean as a percentage of algorithm ALGO's (the table's algorithm column, "
        "e.g. ppo_continuous; '<-' may stand for '←') on the same env",
    )
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="ARG",
        help="a sensitivity figure per env, sensitivity_ARG_ENV.png: the final return (--metric) against each run's "
        "value of the argument ARG (a name in metrics.json's args, e.g. learning_rate), a line per config: the script "
        "and every other argument that differs; repeat for more arguments; not with --x time",
    )
    parser.add_argument(
        "--smooth",
        type=float,
        metavar="WINDOW",
        help="trailing window, in the x axis's unit (env steps, or seconds with --x time), averaged into each curve point "
        f"(default: {DEFAULT_SMOOTH_FRACTION * 100:.0f}%% of the x range; 0: none)",
    )
    args = parser.parse_args(argv)
    if args.total_steps is not None and args.total_steps <= 0:
        raise UsageError("--total-steps must be positive")
    if args.total_time is not None and not (args.total_time > 0 and math.isfinite(args.total_time)):
        raise UsageError("--total-time must be a positive number of seconds")
    if args.smooth is not None and not (args.smooth >= 0 and math.isfinite(args.smooth)):
        raise UsageError("--smooth must be a window >= 0 (steps, or seconds with --x time)")
    if args.x == "steps" and args.total_time is not None:
        raise UsageError("--total-time is for --x time (with steps: --total-steps)")
    if args.x == "time" and (args.total_steps is not None or args.sweep):
        raise UsageError("--total-steps and --sweep are for --x steps (with --x time: --total-time, no sweep)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    runs_dirs = [Path(d) for d in args.runs_dirs]
    missing = [str(d) for d in runs_dirs if not d.is_dir()]
    if missing:
        raise UsageError(
            f"{', '.join(missing)} {'is not a directory' if len(missing) == 1 else 'are not directories'} "
            "(pass the --runs-dir the runs were written to, e.g. runs/)"
        )
    where = ", ".join(map(str, runs_dirs))
    out = Path(args.output_dir) if args.output_dir else runs_dirs[0] / "_plots"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out} is a file (pass another --output-dir)")
    refs = load_references(Path(args.reference)) if args.reference else []
    runs = load_runs(*runs_dirs)
    if not runs:
        raise UsageError(
            f"no readable metrics.json under {where}: nothing to plot (run the training scripts or benchmark.sh first)"
        )
    globs = {"exp": [typed(glob) for glob in args.exp], "env": args.env}
    selected = select(runs, globs)  # the others stay sources of fine-tuned runs' curves (place_runs)
    if not selected:
        raise UsageError(f"no run matches {' and '.join(f'--{k}' for k, v in globs.items() if v)} together: nothing to plot")
    args.sweep = [name.replace("-", "_") for name in args.sweep]
    for name in args.sweep:
        if not any(name in r.args for r in selected):
            raise UsageError(f"--sweep {name}: no run has that argument (see metrics.json's args, e.g. learning_rate)")
    which = "selected run" if len(selected) < len(runs) else "run"
    runs = place_runs(selected, args.x, others=runs)
    if not runs:
        raise UsageError(f"no {which} under {where} has a timings.jsonl with steps: nothing to plot against time")
    args.ratio_to = args.ratio_to and typed(args.ratio_to)  # a fine-tuned run's name
    if args.ratio_to and not any(r.exp == args.ratio_to for r in runs):
        raise UsageError(f"--ratio-to {args.ratio_to}: no runs of that algorithm (see the table's algorithm column)")
    if args.metric == "eval" and not any(len(r.series["eval"][0]) for r in runs):
        warn("no run has an evaluation yet: the table is empty (try --metric train)")
    envs = sorted({r.env for r in runs})
    total = args.total_steps if args.x == "steps" else args.total_time
    budgets = {env: total or max(max(r.total_timesteps, r.global_step) for r in runs if r.env == env) for env in envs}
    budgets = {env: max(budget, 1) for env, budget in budgets.items()}
    palette = plt.get_cmap("tab10")
    colors = {exp: palette(i % 10) for i, exp in enumerate(exp_order(runs))}
    rows = final_table(runs, args.metric, budgets, args.x)
    ref_names = with_references(rows, [ref for ref in refs if ref.metric == args.metric])
    if args.ratio_to:
        with_ratios(rows, args.ratio_to)
    windows = {env: DEFAULT_SMOOTH_FRACTION * budgets[env] if args.smooth is None else args.smooth for env in envs}

    out.mkdir(parents=True, exist_ok=True)
    written = []

    def write(name: str, data: bytes | Figure) -> None:
        if isinstance(data, bytes):
            atomic_write(out / name, data)
        else:
            save_figure(data, out / name)
        written.append(name)

    slug = {env: env.replace("/", "-") for env in envs}
    steps = args.x == "steps"  # the group-size, sensitivity and time-breakdown figures are step-based: made with steps only
    suffix = "" if steps else "_time"  # both kinds of curves and tables can live in one directory
    for env in envs:
        env_runs = [r for r in runs if r.env == env]
        window = windows[env]
        figure = figure_learning_curves(env, env_runs, budgets[env], window, colors, refs, args.x)
        write(f"curves_{slug[env]}{suffix}.png", figure)
        grpo = [r for r in env_runs if r.group_size is not None and steps]
        if grpo:
            baselines = [
                (str(row["algorithm"]), float(row["iqm"]))
                for row in rows
                if row["env"] == env and row["group_size"] is None and row["iqm"] is not None
            ]
            write(f"group_size_{slug[env]}.png", figure_group_sizes(env, grpo, args.metric, budgets[env], window, baselines))
        for name in args.sweep:
            swept = [r for r in env_runs if name in r.args]
            if swept:
                write(f"sensitivity_{name}_{slug[env]}.png", figure_sweep(env, swept, name, args.metric, budgets[env]))
    if len(envs) > 1:
        write(f"curves_all_envs{suffix}.png", figure_env_grid(runs, args.metric, budgets, windows, colors, refs, args.x))
    breakdown = figure_time_breakdown(runs) if steps else None
    if breakdown is not None:
        write("time_breakdown.png", breakdown)
    markdown = table_markdown(rows, args.metric, ref_names, args.ratio_to, args.x)
    write(f"final_performance{suffix}.md", markdown.encode())
    write(f"final_performance{suffix}.csv", table_csv(rows).encode())
    print(markdown)
    print(
        f"{len(runs)} run{'s' * (len(runs) > 1)}, {len(envs)} env{'s' * (len(envs) > 1)}; wrote to {out}: {', '.join(written)}"
    )


if __name__ == "__main__":
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # e.g. an output directory that cannot be written
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
