import copy
import importlib
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

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
# CarRacing-v3 (pixels, ~110 frames/s here): 50 frames are 25 steps of 2 frames
TINY["ppo_cnn_carracing"] = ["--env-id", "CarRacing-v3", "--max-episode-steps", 50, "--frame-skip", 2, "--num-envs", 2,
                             "--num-steps", 16, "--num-minibatches", 2, "--update-epochs", 1, "--torch-threads", 1]
TINY["grpo_cnn_carracing"] = ["--env-id", "CarRacing-v3", "--max-episode-steps", 50, "--frame-skip", 2, "--num-groups", 2,
                              "--group-size", 2, "--minibatch-size", 32, "--update-epochs", 1, "--torch-threads", 1,
                              "--env-workers", 2]


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


def process_alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


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
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while (alive := [c for c in children if process_alive(c)]) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive, "env worker processes outlived their killed parent"
    return json.loads((run_dir / "metrics.json").read_text())["global_step"]


def assert_run_layout(run_dir, script, eval_steps):
    """What every script writes, whatever its algorithm (the README's run layout)."""
    import imageio.v3 as iio

    metrics, timings = read_run(run_dir)
    assert metrics["algo"] == script and metrics["completed"] and metrics["status"] == "completed" and metrics["sps"] > 0
    assert set(metrics["args"]) == {f.name for f in fields(importlib.import_module(script).Args)}
    train = metrics["train"]
    assert len(train["global_step"]) == len(train["episodic_return"]) == len(train["episodic_length"]) > 0
    assert all(1 <= n <= 50 for n in train["episodic_length"]) and train["global_step"] == sorted(train["global_step"])
    assert metrics["eval"]["global_step"] == eval_steps and len(metrics["eval"]["std_return"]) == len(eval_steps)
    assert [row["iteration"] for row in timings] == list(range(1, len(timings) + 1))
    assert timings[-1]["global_step"] == metrics["global_step"]
    assert_timings_add_up(timings)

    log = (run_dir / "logs" / "train.log").read_text()
    assert f"step {metrics['global_step']:,}/{metrics['total_timesteps']:,} (100%)" in log and "done:" in log
    if not torch.cuda.is_available():
        assert "CUDA is not available: training on CPU" in log
    for name in ("latest.pt", "best.pt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, weights_only=False)
        assert {"agent", "optimizer", "rng", "iteration", "global_step", "metrics", "args"} <= set(ckpt)
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["global_step"] == metrics["global_step"]

    videos = sorted((run_dir / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == [f"eval-step{step:09d}.mp4" for step in eval_steps]
    frames = iio.imread(videos[-1])
    assert frames.ndim == 4 and frames.shape[0] >= 2 and frames.std() > 1  # a real, non-blank film
    assert not list(run_dir.rglob("*.tmp*"))  # atomic writes leave no temp files
    return metrics, timings


def poison_update(monkeypatch, module, update_name, at_call=3):
    """Make the module's update function fill the agent's first parameter with NaN on its `at_call`-th
    call. Its first argument is the agent, or a NumpyLearner holding it."""
    real_update, calls = getattr(module, update_name), []

    def poisoned_update(agent, *a):
        stats = real_update(agent, *a)
        calls.append(1)
        if len(calls) == at_call:
            with torch.no_grad():
                next(getattr(agent, "agent", agent).parameters()).fill_(float("nan"))
        return stats

    monkeypatch.setattr(module, update_name, poisoned_update)


@pytest.fixture
def runs_dir(tmp_path):
    return tmp_path / "runs"


def assert_fast_update_matches_torch(module, update_name, agent, batch, args):
    """module.{update_name}_numpy (the CPU fast path) against module.{update_name} (autograd) on copies
    of `agent`: the same parameters, Adam state and losses after two updates, and torch carries on
    from the state the fast path handed back. Returns the torch path's optimizer."""
    torch_update, fast_update = getattr(module, update_name), getattr(module, f"{update_name}_numpy")
    fast = copy.deepcopy(agent)
    opt, fast_opt = (torch.optim.Adam(a.parameters(), lr=3e-3, eps=1e-5, fused=True) for a in (agent, fast))
    learner = module.NumpyLearner(fast, fast_opt)
    for use_fast in (True, True, False):
        torch.manual_seed(1)
        stats = torch_update(agent, opt, batch, args)
        torch.manual_seed(1)
        fast_stats = fast_update(learner, batch, args) if use_fast else torch_update(fast, fast_opt, batch, args)
        for p, q in zip(agent.parameters(), fast.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=2e-6)
            for key in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(fast_opt.state[q][key], opt.state[p][key], rtol=1e-3, atol=1e-8)
        for key, value in stats.items():
            assert float(fast_stats[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), key
    return opt
