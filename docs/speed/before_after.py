"""Before/after timing of the MLP scripts: an older checkout against this one, alternating, same command.

    git worktree add /tmp/before 33296bc          # the release before the speed work
    python docs/speed/before_after.py /tmp/before ppo_continuous,ppo_beta_continuous,grpo_continuous 2

Each run: 40,960 env steps, evaluation and checkpoints off, one thread. Prints and writes (next to
this file, before_after.json) the mean per-iteration phase times of timings.jsonl, first iteration
left out, in ms per 2048 env steps, and metrics.json's SPS.
"""

import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PHASES = ("time_s", "env_step_s", "policy_forward_s", "update_s")


def run(root, script, runs_dir):
    cmd = [sys.executable, f"{root}/{script}.py", "--total-timesteps", "40960", "--eval-every", "0", "--no-capture-video",
           "--checkpoint-every", "0", "--runs-dir", runs_dir]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=root)
    run_dir = Path(glob.glob(f"{runs_dir}/*/")[0])
    rows = [json.loads(line) for line in (run_dir / "timings.jsonl").read_text().splitlines()][1:]
    steps = (rows[-1]["global_step"] - rows[0]["global_step"]) / (len(rows) - 1)
    per = {k: 1000 * statistics.mean(r[k] for r in rows) * 2048 / steps for k in PHASES}
    per["other"] = per["time_s"] - per["env_step_s"] - per["policy_forward_s"] - per["update_s"]
    per["sps"] = json.loads((run_dir / "metrics.json").read_text())["sps"]
    return per


def main(before, scripts, reps):
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for script in scripts:
                for side, root in (("before", before), ("after", str(ROOT))):
                    per = run(root, script, f"{tmp}/{side}-{script}-{rep}")
                    out.setdefault(script, {}).setdefault(side, []).append(per)
                    print(script, side, rep, {k: round(v) for k, v in per.items()}, flush=True)
    tmp_path = HERE / f".tmp{os.getpid()}-before_after.json"
    tmp_path.write_text(json.dumps(out, indent=1))
    os.replace(tmp_path, HERE / "before_after.json")
    for script, sides in out.items():
        for side, runs in sides.items():
            print(script, side, {k: round(statistics.mean(r[k] for r in runs)) for k in runs[0]})


if __name__ == "__main__":
    argv = sys.argv[1:]
    if len(argv) != 3 or not argv[2].isdigit() or int(argv[2]) < 1:
        sys.exit("usage: python docs/speed/before_after.py BEFORE_CHECKOUT SCRIPT[,SCRIPT...] REPS (REPS >= 1)")
    missing = [f"{root}/{s}.py" for s in argv[1].split(",") for root in (argv[0], ROOT) if not Path(root, f"{s}.py").exists()]
    if missing:
        sys.exit(f"error: no such script: {', '.join(missing)} (give a checkout, e.g. git worktree add /tmp/before 33296bc, and script names without .py)")
    try:
        main(argv[0], argv[1].split(","), int(argv[2]))
    except subprocess.CalledProcessError as e:
        sys.exit(f"error: {' '.join(e.cmd)} failed with exit status {e.returncode}: {(e.stderr.decode().strip().splitlines() or [''])[-1]}")
