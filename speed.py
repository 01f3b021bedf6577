"""The speed benchmark: each training script against its environment-bound limit, and PPO against CleanRL's.

For every configuration it measures, in this one run and one after the other on the same machine:
- raw env steps/s: the script's own training envs (its `make_vector_env`: the same backend, number of envs and wrappers
  as `main` builds) stepped with uniform random actions, before and after the training run, averaged;
- train SPS: the script run as a user runs it, with a fixed budget and evaluation off (metrics.json's `sps`: env steps
  over the wall time of the training loop), and its steady-state SPS (timings.jsonl without the first iteration, which
  holds --compile's compilation);
and prints a table of both and their ratio. With --cleanrl-python it also runs CleanRL's ppo_continuous_action.py (in
its own venv, see ../shared/peers/README.md) on the same env, alternating with ours eager and ours --compile.
Quote ratios: absolute rates move with the load of a shared machine, ratios taken minutes apart much less.

Run:  python speed.py                                   (every script at its defaults)
      python speed.py --scripts ppo_continuous --cleanrl-python /tmp/peer/venv/bin/python --rounds 2
"""

import argparse
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NoReturn, NotRequired, TypedDict

import numpy as np

ROOT = Path(__file__).resolve().parent
SCRIPTS = ("ppo_continuous", "ppo_beta_continuous", "grpo_continuous", "ppo_cnn_carracing", "grpo_cnn_carracing")
CNN_SCRIPTS = ("ppo_cnn_carracing", "grpo_cnn_carracing")
CLEANRL = ROOT.parent / "shared" / "peers" / "cleanrl_ppo_continuous_action.py"
Phase = Literal["rollout_s", "update_s"]
PHASES: tuple[Phase, ...] = ("rollout_s", "update_s")  # timings.jsonl's: the table's "rollout s", "update s" per iteration
# whose make_vector_env gives the raw env rate: GRPO's members run one episode each, a vector env of the same envs does not
ENVS_OF = {"cleanrl": "ppo_continuous", "grpo_continuous": "ppo_continuous", "grpo_cnn_carracing": "ppo_cnn_carracing"}


class Measured(TypedDict):
    """What one training run gives: its SPS, steady-state SPS and extra seconds of the first iteration, and (ours, not
    CleanRL's) the seconds of each of PHASES per steady iteration."""

    sps: float
    steady_sps: float
    first_iteration_extra_s: float
    rollout_s: NotRequired[float]
    update_s: NotRequired[float]


class Row(TypedDict):
    """A measurement, a row of the table and of FILE.json (a dict: its keys, in this order, are FILE.json's; those
    NotRequired are missing from some rows: the phases from CleanRL's and from an older FILE.json's, vs_eager from a
    row without --compile)."""

    round: int
    script: str
    argv: str  # the flags, joined by spaces
    raw: float
    sps: float
    steady_sps: float
    first_iteration_extra_s: float
    rollout_s: NotRequired[float]
    update_s: NotRequired[float]
    ratio: float
    vs_cleanrl: NotRequired[float]  # set once every row is measured
    vs_eager: NotRequired[float]


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, like every other bad input
        raise UsageError(f"{message} (see python speed.py --help)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = Parser(description="Raw env rate and train SPS of each training script, measured in one run, and their ratio.")
    parser.add_argument(
        "--scripts",
        nargs="+",
        choices=SCRIPTS,
        default=list(SCRIPTS),
        metavar="SCRIPT",
        help=f"the training scripts to measure, each at its defaults (default: all: {' '.join(SCRIPTS)})",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=("gymnasium", "envpool"),
        default=["gymnasium"],
        help="--env-backend values to measure every script with (default: gymnasium)",
    )
    parser.add_argument(
        "--mlp-timesteps",
        type=int,
        default=40_960,
        metavar="N",
        help="env steps of each MLP script's training run (default: 40960, 20 PPO iterations)",
    )
    parser.add_argument(
        "--cnn-timesteps",
        type=int,
        default=4_096,
        metavar="N",
        help="agent steps of each CNN script's training run (default: 4096, two PPO iterations of 8 x 256)",
    )
    parser.add_argument(
        "--raw-steps",
        type=int,
        default=0,
        metavar="N",
        help="env steps of each raw env measurement (default 0: a tenth of the training budget, >= 256)",
    )
    parser.add_argument("--compile", action="store_true", help="also measure every script with --compile")
    parser.add_argument(
        "--cleanrl-python",
        metavar="PYTHON",
        help="the python of a venv with CleanRL's dependencies: also run CleanRL's ppo_continuous_action.py",
    )
    parser.add_argument(
        "--cleanrl-script", default=str(CLEANRL), metavar="FILE", help=f"CleanRL's script (default: {CLEANRL})"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, metavar="N", help="measure everything N times, alternating (default: 1)"
    )
    parser.add_argument("--extra-args", default="", metavar="FLAGS", help="more flags for every training run, split on spaces")
    parser.add_argument(
        "--output", metavar="FILE", help="also write the table to FILE (markdown) and the numbers to FILE.json"
    )
    parser.add_argument("--from-json", metavar="FILE", help="measure nothing: make the table again from an earlier FILE.json")
    args = parser.parse_args(argv)
    if args.mlp_timesteps <= 0 or args.cnn_timesteps <= 0 or args.raw_steps < 0 or args.rounds <= 0:
        raise UsageError("--mlp-timesteps, --cnn-timesteps and --rounds must be positive and --raw-steps >= 0")
    if args.cleanrl_python and not (Path(args.cleanrl_python).exists() and Path(args.cleanrl_script).exists()):
        raise UsageError(f"--cleanrl-python {args.cleanrl_python} or --cleanrl-script {args.cleanrl_script} does not exist")
    return args


def env_rate(script: str, argv: list[str], num_steps: int, seed: int = 1) -> float:
    """Steps per second of the script's training envs, built as its main builds them, under uniform random actions; for
    the CNN scripts in agent steps (each `--frame-skip` frames), the unit of their SPS."""
    import tyro

    module = importlib.import_module(script)
    args = tyro.cli(module.Args, args=argv)
    module.check_args(args)
    space, envs = module.check_env(args)[1], module.make_vector_env(args)
    n = envs.num_envs
    try:
        envs.reset(seed=seed)
        actions = np.random.default_rng(seed).uniform(space.low, space.high, (max(1, num_steps // n), n, *space.shape))
        start = time.perf_counter()
        for action in actions.astype(np.float32):
            envs.step(action)
        return len(actions) * n / (time.perf_counter() - start)
    finally:
        envs.close()


def train(script: str, argv: list[str], budget: int, workdir: str) -> Measured:
    """metrics.json's SPS and the steady-state SPS (iterations after the first) of one short training run."""
    runs_dir = Path(tempfile.mkdtemp(dir=workdir))
    cmd = [
        sys.executable,
        str(ROOT / f"{script}.py"),
        *argv,
        "--total-timesteps",
        str(budget),
        "--eval-every",
        "0",
        "--no-capture-video",
        "--checkpoint-every",
        "0",
        "--runs-dir",
        str(runs_dir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1]}")
    run_dir = next(runs_dir.glob("*/metrics.json")).parent
    rows = [json.loads(line) for line in (run_dir / "timings.jsonl").read_text().splitlines()]
    steady = rows[1:] or rows
    steps = rows[-1]["global_step"] - (rows[0]["global_step"] if len(rows) > 1 else 0)
    first_extra = rows[0]["time_s"] - statistics.median(r["time_s"] for r in steady)
    sps = json.loads((run_dir / "metrics.json").read_text())["sps"]
    measured: Measured = {
        "sps": sps,
        "steady_sps": steps / sum(r["time_s"] for r in steady),
        "first_iteration_extra_s": first_extra,
    }
    for k in PHASES:  # seconds per steady iteration
        measured[k] = statistics.mean(r[k] for r in steady)
    return measured


def cleanrl(python: str, script: str, env_id: str, budget: int, workdir: str) -> Measured:
    """CleanRL's own SPS line at the end of its run: global steps over wall time since its start, as our `sps`."""
    cmd = [python, script, "--env-id", env_id, "--total-timesteps", str(budget), "--no-cuda"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env={**os.environ, "OMP_NUM_THREADS": "1"})
    found = re.findall(r"SPS: (\d+)", proc.stdout + proc.stderr)
    if proc.returncode or not found:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1]}")
    return {"sps": float(found[-1]), "steady_sps": float("nan"), "first_iteration_extra_s": float("nan")}


def table(rows: Sequence[Row]) -> str:
    head = "| round | script | flags | raw env steps/s | train SPS | steady SPS | 1st iteration extra s | train / raw |"
    lines = [head + " SPS / CleanRL's | rollout s | update s | steady / eager |"]
    lines.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    nan = float("nan")
    for r in rows:
        cells = [str(r["round"]), r["script"], r["argv"] or "(defaults)", f"{r['raw']:,.0f}", f"{r['sps']:,.0f}"]
        cells += (
            f"{r['steady_sps']:,.0f}",
            f"{r['first_iteration_extra_s']:.1f}",
            f"**{r['ratio']:.2f}**",
            f"{r['vs_cleanrl']:.2f}",
            *(f"{r.get(k, nan):.3f}" for k in PHASES),  # rows of an older FILE.json have no phases
            f"{r.get('vs_eager', nan):.2f}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines).replace("nan", "-")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.output:  # before the measurements, not after them: a bad --output must not cost a run's minutes
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    configs = [(s, [] if b == "gymnasium" else ["--env-backend", b]) for s in args.scripts for b in args.backends]
    configs += [(s, [*flags, "--compile"]) for s, flags in configs] if args.compile else []
    if args.cleanrl_python:  # CleanRL between ours eager and ours --compile: the three side by side in every round
        side_by_side = [("ppo_continuous", []), ("cleanrl", []), ("ppo_continuous", ["--compile"])]
        configs = side_by_side + [c for c in configs if c not in side_by_side]
    rows: list[Row] = json.loads(Path(args.from_json).read_text()) if args.from_json else []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="speed-") as workdir:
        for round in range(1, 0 if args.from_json else args.rounds + 1):
            for script, flags in configs:
                budget = args.cnn_timesteps if script in CNN_SCRIPTS else args.mlp_timesteps
                raw_steps = args.raw_steps or max(budget // 10, 256)
                env_script = ENVS_OF.get(script, script)
                env_argv = [f for f in flags if f != "--compile"]
                raw_before = env_rate(env_script, env_argv, raw_steps)
                if script == "cleanrl":
                    result = cleanrl(args.cleanrl_python, args.cleanrl_script, "Hopper-v4", budget, workdir)
                else:
                    result = train(script, [*flags, *args.extra_args.split()], budget, workdir)
                raw = (raw_before + env_rate(env_script, env_argv, raw_steps)) / 2
                row: Row = {
                    "round": round,
                    "script": script,
                    "argv": " ".join(flags),
                    "raw": raw,
                    **result,
                    "ratio": result["sps"] / raw,
                }
                rows.append(row)
                print(
                    f"{script} {row['argv']}: raw {raw:,.0f}/s, train {row['sps']:,.0f} SPS "
                    f"(steady {row['steady_sps']:,.0f}), ratio {row['ratio']:.2f}",
                    flush=True,
                )
    for row in rows:  # against CleanRL's run of the same round, measured minutes apart, on the same env (Hopper-v4)
        cleanrl_sps = [r["sps"] for r in rows if r["script"] == "cleanrl" and r["round"] == row["round"]]
        same_env = row["script"] not in CNN_SCRIPTS and "--env-id" not in row["argv"]
        row["vs_cleanrl"] = row["sps"] / cleanrl_sps[0] if cleanrl_sps and same_env else float("nan")
        if row["argv"].endswith("--compile"):  # over the same script and flags without --compile, in this round
            eager = (row["round"], row["script"], row["argv"].removesuffix("--compile").strip())
            steady = [r["steady_sps"] for r in rows if (r["round"], r["script"], r["argv"]) == eager]
            row["vs_eager"] = row["steady_sps"] / steady[0] if steady else float("nan")
    text = table(rows)
    print(f"\n{text}\n\n({len(rows)} measurements in {time.time() - started:.0f}s; raw = the training envs, random actions)")
    if args.output:
        out = Path(args.output)
        for path, data in ((out, text + "\n"), (out.with_suffix(".json"), json.dumps(rows, indent=1))):
            tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
            tmp.write_text(data)
            os.replace(tmp, path)


if __name__ == "__main__":
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (RuntimeError, OSError) as e:  # a training run that failed, an output that cannot be written
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
