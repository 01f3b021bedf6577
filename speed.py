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

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tyro

ROOT = Path(__file__).resolve().parent
CNN_SCRIPTS = ("ppo_cnn_carracing", "grpo_cnn_carracing")


@dataclass
class Args:
    scripts: tuple[str, ...] = ("ppo_continuous", "ppo_beta_continuous", "grpo_continuous", "ppo_cnn_carracing", "grpo_cnn_carracing")
    """the training scripts to measure (stems), each at its default env and hyperparameters"""
    backends: tuple[str, ...] = ("gymnasium",)
    """--env-backend values to measure every script with (gymnasium, envpool)"""
    mlp_timesteps: int = 40_960
    """env steps of each MLP script's training run (20 PPO iterations at CleanRL's 2048)"""
    cnn_timesteps: int = 2_048
    """agent steps of each CNN script's training run"""
    raw_steps: int = 0
    """env steps of each raw env measurement (0: a tenth of the training budget)"""
    scaling_script: Optional[str] = "ppo_continuous"
    """the script of the --num-envs scaling table (None: no table); the batch stays num_envs x num_steps = 2048"""
    num_envs: tuple[int, ...] = (1, 2, 4, 8)
    """--num-envs values of the scaling table"""
    vector_modes: tuple[str, ...] = ("sync", "async")
    """--vector-mode values of the scaling table"""
    extra_args: tuple[str, ...] = ()
    """more flags for every training run, e.g. --extra-args --no-cuda"""
    output: Optional[str] = None
    """also write the table here (markdown) and the numbers next to it (.json); written atomically"""


def script_args(module, argv):
    """The script's own Args for these flags, checked as main checks them."""
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
        raise SystemExit(f"error: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
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


def main(args: Args):
    unknown = [s for s in args.scripts + ((args.scaling_script,) if args.scaling_script else ()) if not (ROOT / f"{s}.py").exists()]
    if unknown:
        raise SystemExit(f"error: no script {', '.join(unknown)} in {ROOT} (pass stems such as ppo_continuous)")
    if min(args.num_envs) <= 0 or args.mlp_timesteps <= 0 or args.cnn_timesteps <= 0 or args.raw_steps < 0:
        raise SystemExit("error: --num-envs, --mlp-timesteps and --cnn-timesteps must be positive, --raw-steps >= 0")
    sys.path.insert(0, str(ROOT))
    configs = []
    for script in args.scripts:
        for backend in args.backends:
            configs.append((script, [] if backend == "gymnasium" else ["--env-backend", backend]))
    if args.scaling_script:
        for n in args.num_envs:
            for mode in args.vector_modes:
                configs.append((args.scaling_script, ["--num-envs", str(n), "--vector-mode", mode, "--num-steps", str(max(1, 2048 // n))]))
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="speed-") as workdir:
        for script, argv in configs:
            budget = args.cnn_timesteps if script in CNN_SCRIPTS else args.mlp_timesteps
            row = measure(script, argv, budget, args.raw_steps or max(budget // 10, 256), args.extra_args, workdir)
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
    main(tyro.cli(Args))
