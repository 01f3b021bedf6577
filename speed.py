"""The speed benchmark: how close each training script gets to its environment-bound limit.

For every configuration it measures, in this one run and one after the other on the same machine:
- the raw env rate: the script's own training envs (`env_rate` in each script: the same backend,
  number of envs and wrappers as `main` builds) stepped with uniform random actions, measured
  before and after the training run and averaged;
- the train SPS: the script run as a user runs it, with a fixed budget and evaluation off
  (metrics.json's `sps`: env steps over the wall time of the training loop);
and prints a table of both and their ratio. Quote the ratios: absolute rates move with the load
of a shared machine, ratios taken minutes apart much less.

Run:  python speed.py            (every script at its defaults, then PPO's --num-envs scaling)
      python speed.py --scripts ppo_continuous --num-envs 1 2 4 8 --vector-modes sync async
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SCRIPTS = ("ppo_continuous", "ppo_beta_continuous", "grpo_continuous", "ppo_cnn_carracing", "grpo_cnn_carracing")
CNN_SCRIPTS = ("ppo_cnn_carracing", "grpo_cnn_carracing")


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other bad input
        raise UsageError(f"{message} (see python speed.py --help)")


def parse_args(argv):
    parser = Parser(description="Raw env rate and train SPS of each training script, measured one after the other in one run, "
                    "and their ratio; then the --num-envs scaling of one script.")
    parser.add_argument("--scripts", nargs="+", choices=SCRIPTS, default=list(SCRIPTS), metavar="SCRIPT",
                        help=f"the training scripts to measure, each at its default env and hyperparameters (default: all: {' '.join(SCRIPTS)})")
    parser.add_argument("--backends", nargs="+", choices=("gymnasium", "envpool"), default=["gymnasium"],
                        help="--env-backend values to measure every script with (default: gymnasium)")
    parser.add_argument("--mlp-timesteps", type=int, default=40_960, metavar="N",
                        help="env steps of each MLP script's training run (default: 40960, 20 PPO iterations of 2048)")
    parser.add_argument("--cnn-timesteps", type=int, default=4_096, metavar="N", help="agent steps of each CNN script's training run (default: 4096, two PPO iterations of 8 x 256)")
    parser.add_argument("--raw-steps", type=int, default=0, metavar="N",
                        help="env steps of each raw env measurement (default 0: a tenth of the training budget, at least 256)")
    parser.add_argument("--scaling-script", choices=(*SCRIPTS[:2], "none"), default="ppo_continuous",
                        help="the script of the --num-envs scaling table, the batch kept at num_envs x num_steps = 2048 (default: "
                             "ppo_continuous; none: no table)")
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1, 2, 4, 8], metavar="N",
                        help="--num-envs values of the scaling table (default: 1 2 4 8)")
    parser.add_argument("--vector-modes", nargs="+", choices=("sync", "async"), default=["sync", "async"],
                        help="gymnasium --vector-mode values of the scaling table; each --backends envpool adds an envpool row (default: sync async)")
    parser.add_argument("--extra-args", default="", metavar="FLAGS",
                        help="more flags for every training run, split on spaces, e.g. --extra-args='--no-cuda' (default: none)")
    parser.add_argument("--output", metavar="FILE", help="also write the table to FILE (markdown) and the numbers to FILE with .json")
    args = parser.parse_args(argv)
    if min(args.num_envs) <= 0 or args.mlp_timesteps <= 0 or args.cnn_timesteps <= 0 or args.raw_steps < 0:
        raise UsageError("--num-envs, --mlp-timesteps and --cnn-timesteps must be positive and --raw-steps >= 0")
    if any(2048 % n for n in args.num_envs):
        raise UsageError(f"every --num-envs must divide the batch of 2048, got {args.num_envs}")
    return args


def script_args(module, argv):
    """The script's own Args for these flags, checked as main checks them."""
    import tyro

    args = tyro.cli(module.Args, args=argv)
    module.check_args(args)
    return args


def measure(script, argv, budget, raw_steps, extra_args, workdir):
    """Raw env rate (before and after) and the train SPS of one configuration."""
    module = importlib.import_module(script)
    args = script_args(module, [*argv, "--total-timesteps", str(budget)])
    raw_before = module.env_rate(args, raw_steps)
    runs_dir = Path(tempfile.mkdtemp(dir=workdir))
    cmd = [sys.executable, str(ROOT / f"{script}.py"), *argv, "--total-timesteps", str(budget), "--eval-every", "0",
           "--no-capture-video", "--checkpoint-every", "0", "--runs-dir", str(runs_dir), *extra_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit status {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1]}")
    metrics = json.loads(next(runs_dir.glob("*/metrics.json")).read_text())
    raw_after = module.env_rate(args, raw_steps)
    raw = (raw_before + raw_after) / 2
    return {"script": script, "argv": " ".join(argv), "raw": raw, "raw_before": raw_before, "raw_after": raw_after,
            "sps": metrics["sps"], "ratio": metrics["sps"] / raw}


def table(rows):
    lines = ["| script | flags | raw env steps/s | train SPS | train / raw |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['script']} | {r['argv'] or '(defaults)'} | {r['raw']:,.0f} | {r['sps']:,.0f} | **{r['ratio']:.2f}** |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    configs = []
    for script in args.scripts:
        for backend in args.backends:
            configs.append((script, [] if backend == "gymnasium" else ["--env-backend", backend]))
    if args.scaling_script != "none":
        for n in args.num_envs:
            for mode in args.vector_modes + ["envpool"] * ("envpool" in args.backends):
                backend = ["--env-backend", "envpool"] if mode == "envpool" else ["--vector-mode", mode]
                configs.append((args.scaling_script, ["--num-envs", str(n), *backend, "--num-steps", str(2048 // n)]))
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="speed-") as workdir:
        for script, argv in configs:
            budget = args.cnn_timesteps if script in CNN_SCRIPTS else args.mlp_timesteps
            row = measure(script, argv, budget, args.raw_steps or max(budget // 10, 256), args.extra_args.split(), workdir)
            rows.append(row)
            print(f"{script} {row['argv']}: raw {row['raw']:,.0f}/s (before {row['raw_before']:,.0f}, after {row['raw_after']:,.0f}), "
                  f"train {row['sps']:,.0f} SPS, ratio {row['ratio']:.2f}", flush=True)
    text = table(rows)
    print(f"\n{text}\n\n({len(rows)} configurations in {time.time() - started:.0f}s; raw = the script's training envs with random actions)")
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
