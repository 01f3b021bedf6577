import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCRIPTS = ["ppo_continuous", "ppo_beta_continuous", "grpo_continuous", "ppo_cnn_carracing", "grpo_cnn_carracing"]
# the smallest arguments that still exercise a script on Hopper-v4 (short episodes, tiny updates)
TINY = {
    "ppo_continuous": ["--env-id", "Hopper-v4", "--max-episode-steps", 50, "--num-steps", 128, "--num-minibatches", 4,
                       "--update-epochs", 2],
    "grpo_continuous": ["--env-id", "Hopper-v4", "--max-episode-steps", 50, "--num-groups", 2, "--group-size", 3,
                        "--minibatch-size", 64, "--update-epochs", 2],
}
TINY["ppo_beta_continuous"] = TINY["ppo_continuous"]


def existing_scripts():
    return [name for name in SCRIPTS if (ROOT / f"{name}.py").exists()]


def run_script(script, *args, timeout=600, **kwargs):
    """Run a training script as a user would; returns the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(ROOT / f"{script}.py"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=kwargs.get("cwd", ROOT))


def read_run(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    timings = [json.loads(line) for line in (run_dir / "timings.jsonl").read_text().splitlines()]
    return metrics, timings


def tb_scalars(run_dir):
    """TensorBoard scalars of a run: {tag: [steps]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_clean_error(result, expected):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def assert_timings_add_up(timings):
    for row in timings:
        phases = row["rollout_s"] + row["update_s"] + row["eval_s"] + row["io_s"]
        assert abs(phases - row["time_s"]) <= 0.03 * row["time_s"]
        assert row["env_step_s"] + row["policy_forward_s"] <= row["rollout_s"] and row["sps"] > 0


def kill_when(proc, run_dir, min_step, timeout=300):
    """SIGKILL `proc` once its metrics.json reaches `min_step`; returns the step it was killed at."""
    import signal
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads((run_dir / "metrics.json").read_text())["global_step"] >= min_step:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return json.loads((run_dir / "metrics.json").read_text())["global_step"]


@pytest.fixture
def runs_dir(tmp_path):
    return tmp_path / "runs"
