import importlib
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCRIPTS = ["ppo_continuous", "ppo_beta_continuous", "grpo_continuous", "ppo_cnn_carracing", "grpo_cnn_carracing"]
# the smallest arguments that still exercise a script on Hopper-v4 (short episodes, tiny updates)
TINY = {
    "ppo_continuous": [
        "--env-id",
        "Hopper-v4",
        "--max-episode-steps",
        50,
        "--num-steps",
        128,
        "--num-minibatches",
        4,
        "--update-epochs",
        2,
    ],
    "grpo_continuous": [
        "--env-id",
        "Hopper-v4",
        "--max-episode-steps",
        50,
        "--num-groups",
        2,
        "--group-size",
        3,
        "--minibatch-size",
        64,
        "--update-epochs",
        2,
    ],
}
TINY["ppo_beta_continuous"] = TINY["ppo_continuous"]
# CarRacing-v3 (pixels, ~110 frames/s here): 50 frames are 25 steps of 2 frames
TINY["ppo_cnn_carracing"] = [
    "--env-id",
    "CarRacing-v3",
    "--max-episode-steps",
    50,
    "--frame-skip",
    2,
    "--num-envs",
    2,
    "--num-steps",
    16,
    "--num-minibatches",
    2,
    "--update-epochs",
    1,
    "--torch-threads",
    1,
]
TINY["grpo_cnn_carracing"] = [
    "--env-id",
    "CarRacing-v3",
    "--max-episode-steps",
    50,
    "--frame-skip",
    2,
    "--num-groups",
    2,
    "--group-size",
    2,
    "--minibatch-size",
    32,
    "--update-epochs",
    1,
    "--torch-threads",
    1,
]


def existing_scripts():
    return [name for name in SCRIPTS if (ROOT / f"{name}.py").exists()]


def run_script(script, *args, timeout=600, **kwargs):
    """Run a training script as a user would; returns the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(ROOT / f"{script}.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=kwargs.get("cwd", ROOT),
    )


def kill_at(script, point, step, *args):
    """Run a training script and SIGKILL it at an exact point of its bookkeeping once it reaches `step` (tests/kill_at.py:
    before_row, before_checkpoint, after_checkpoint, after_best); returns the metrics.json it left."""
    command = [sys.executable, str(ROOT / "tests" / "kill_at.py"), script, point, str(step), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == -9, result.stderr  # killed, not finished or crashed
    runs_dir = Path(args[list(args).index("--runs-dir") + 1])
    (run_dir,) = runs_dir.iterdir()
    return json.loads((run_dir / "metrics.json").read_text())


def run_cli(monkeypatch, capsys, script, *args):
    """The script's command line in this process (a subprocess per case would spend seconds importing torch):
    returns (exit status, stdout, stderr)."""
    module = importlib.import_module(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *map(str, args)])
    try:
        module.cli(module.main, module.Args, module.ALGO)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


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


def tb_values(run_dir, tag):
    """(steps, values) of one TensorBoard scalar of a run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)]


def assert_clean_error(result, expected):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def assert_timings_add_up(timings, wall_time_s):
    """Every phase was timed; the policy's and the envs' time is part of the rollout's. (test_ppo_runs.py checks on a
    fake clock that each phase gets its own seconds and that the rows add up to the run's wall time.)"""
    for row in timings:
        assert min(row["rollout_s"], row["update_s"], row["io_s"], row["sps"]) > 0 and row["eval_s"] >= 0
        assert 0 < row["policy_forward_s"] and 0 < row["env_step_s"]
        assert row["policy_forward_s"] + row["env_step_s"] <= row["rollout_s"]
    # the rows never claim more than the run's wall time (metrics.json's stops before the last row's io)
    assert sum(row["time_s"] for row in timings) <= wall_time_s + timings[-1]["io_s"]


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
    assert_timings_add_up(timings, metrics["wall_time_s"])

    log = (run_dir / "logs" / "train.log").read_text()
    assert f"step {metrics['global_step']:,}/{metrics['total_timesteps']:,} (100%)" in log
    for name in ("latest.pt", "best.pt"):  # plain tensors and containers: loadable without running any code
        ckpt = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert {"agent", "optimizer", "rng", "iteration", "global_step", "metrics", "args"} <= set(ckpt)
        assert ckpt["algo"] == script
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["global_step"] == metrics["global_step"]

    videos = sorted((run_dir / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == [f"eval-step{step:09d}.mp4" for step in eval_steps]
    frames = iio.imread(videos[-1])
    assert frames.ndim == 4 and frames.shape[0] >= 2 and frames.std() > 1  # a real, non-blank film
    assert not list(run_dir.rglob("*.tmp*"))  # atomic writes leave no temp files
    assert_eval_checkpoint(run_dir, script, metrics)
    return metrics, timings


def assert_eval_checkpoint(run_dir, script, metrics):
    """--eval-checkpoint best.pt replays the run's best evaluation (the same episodes: the run's seed, env and arguments
    come from the checkpoint), films its best episode next to it, and writes nothing else."""
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    best = run_dir / "checkpoints" / "best.pt"
    result = run_script(script, "--eval-checkpoint", best, "--eval-episodes", metrics["args"]["eval_episodes"])
    assert result.returncode == 0, result.stderr
    mean = float(result.stdout.split(": return ")[1].split(" +- ")[0])
    assert abs(mean - metrics["best_eval_return"]) < 0.01, (mean, metrics["best_eval_return"])
    assert {p for p in run_dir.rglob("*") if p.is_file() and p not in before} == {run_dir / "checkpoints" / "best.mp4"}
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in before.items())


def poison_update(monkeypatch, module, at_call=3):
    """Make the module's update (ppo_update or grpo_update) fill the agent's first parameter with NaN on its
    `at_call`-th call."""
    name = "grpo_update" if hasattr(module, "grpo_update") else "ppo_update"
    real_make, real_update, agents, calls = module.runlib.make_update_step, getattr(module, name), [], []

    def make_update_step(agent, *args):
        agents.append(agent)
        return real_make(agent, *args)

    def update(*args):
        stats = real_update(*args)
        calls.append(1)
        if len(calls) == at_call:
            with torch.no_grad():
                next(agents[-1].parameters()).fill_(float("nan"))
        return stats

    monkeypatch.setattr(module.runlib, "make_update_step", make_update_step)  # shared: runlib.py
    monkeypatch.setattr(module, name, update)


def rollout(module, T, N, env_id, max_episode_steps=None, backend="gymnasium", seed=0, bound=1.0, delay=1):
    """T steps of module.collect_rollout (a PPO script's) with an untrained agent, statistics off. Returns the Rollout,
    the obs after the last step (float32) and the ended episodes as [(t, return, length)]."""
    import envlib
    import runlib

    args = SimpleNamespace(
        env_id=env_id, max_episode_steps=max_episode_steps, num_envs=N, vector_mode="sync", env_backend=backend
    )
    envs = module.make_vector_env(args)
    next_obs, _ = envs.reset(seed=seed)
    import gymnasium as gym

    obs_dim, act_dim = next_obs.shape[1], gym.make(env_id).action_space.shape[0]
    agent, norm = module.Agent(obs_dim, act_dim, (8,)), envlib.ObsNormalizer((obs_dim,), 10.0, enabled=False)
    buf = module.Rollout.empty(T, N, obs_dim, act_dim)
    scaler, ended, low, high = envlib.RewardScaler(N, 0.99, 10.0, enabled=False), [], torch.tensor(-bound), torch.tensor(bound)
    with torch.inference_mode():
        next_obs = module.collect_rollout(
            envs,
            next_obs,
            agent.sample,
            norm,
            scaler,
            envlib.RewardDelay(N, delay),
            buf,
            low,
            high,
            envlib.Episodes(N),
            lambda *e: ended.append(e),
            runlib.Timings(),
        )
    envs.close()
    return buf, next_obs.astype(np.float32), ended


@pytest.fixture
def runs_dir(tmp_path):
    return tmp_path / "runs"
