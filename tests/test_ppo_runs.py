"""ppo_continuous.py and ppo_beta_continuous.py end to end: the run layout, resume after kill -9, the
NaN stop, learning. The command line and bad input of every script are in test_cli.py."""

import importlib
import math

import numpy as np
import pytest
import torch

from conftest import (
    TINY,
    assert_run_layout,
    kill_at,
    poison_update,
    read_run,
    run_script,
    tb_scalars,
    tb_values,
)

PPO_SCRIPTS = ["ppo_continuous", "ppo_beta_continuous"]
TB_TAGS = [
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "charts/learning_rate",
    "losses/value_loss",
    "losses/policy_loss",
    "losses/entropy",
    "losses/old_approx_kl",
    "losses/approx_kl",
    "losses/clipfrac",
    "losses/explained_variance",
    "eval/mean_return",
    "eval/std_return",
]


@pytest.mark.parametrize("script", PPO_SCRIPTS)
def test_smoke_writes_the_whole_run_layout(runs_dir, script):
    result = run_script(
        script,
        *TINY[script],
        "--num-envs",
        2,
        "--total-timesteps",
        1024,
        "--eval-every",
        512,
        "--eval-episodes",
        2,
        "--checkpoint-every",
        256,
        "--runs-dir",
        runs_dir,
    )
    assert result.returncode == 0, result.stderr
    run_dir = runs_dir / f"Hopper-v4__{script}__seed1"
    metrics, timings = assert_run_layout(run_dir, script, eval_steps=[512, 1024])
    assert {k: metrics[k] for k in ("env_id", "exp_name", "seed", "group_size", "global_step", "total_timesteps")} == {
        "env_id": "Hopper-v4",
        "exp_name": script,
        "seed": 1,
        "group_size": None,
        "global_step": 1024,
        "total_timesteps": 1024,
    }
    assert len(timings) == 4  # 1,024 steps in batches of 2 envs x 128 steps
    assert {"obs_norm", "reward_scaler"} <= set(torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True))
    steps = tb_scalars(run_dir)
    assert set(TB_TAGS) <= set(steps), set(TB_TAGS) - set(steps)
    assert steps["charts/SPS"] == [256, 512, 768, 1024]


@pytest.mark.parametrize("script", ["ppo_continuous"])  # make_vector_env is the same text in every MLP script
def test_sync_and_async_vector_envs_give_the_same_run(runs_dir, script):
    """... and --cuda on a machine without CUDA trains the same run on the CPU, saying so."""
    common = [*TINY[script], "--num-envs", 2, "--total-timesteps", 512, "--eval-every", 0, "--runs-dir", runs_dir]
    for mode, device in (("sync", "--no-cuda"), ("async", "--cuda")):
        assert run_script(script, *common, "--vector-mode", mode, device, "--exp-name", mode).returncode == 0
    sync, _ = read_run(runs_dir / "Hopper-v4__sync__seed1")
    asyn, _ = read_run(runs_dir / "Hopper-v4__async__seed1")
    assert sync["train"] == asyn["train"] and len(sync["train"]["episodic_return"]) > 4
    log = (runs_dir / "Hopper-v4__async__seed1" / "logs" / "train.log").read_text()
    assert torch.cuda.is_available() or "steps on cpu (--cuda: CUDA is not available)" in log


RESUME_CASES = [("ppo_continuous", "gymnasium", "before_row"), ("ppo_beta_continuous", "gymnasium", "before_checkpoint")]
RESUME_CASES += [("ppo_continuous", "envpool", "after_checkpoint")]


@pytest.mark.parametrize("script,backend,point", RESUME_CASES)
def test_resume_after_kill_9_continues_without_gap_or_duplicate(runs_dir, script, backend, point):
    """Killed at an exact point of the bookkeeping (tests/kill_at.py), the resumed run's records are the whole run's.
    (test_resume.py checks the restored state itself.)"""
    if backend == "envpool":
        pytest.importorskip("envpool")
    args = [
        *TINY[script],
        "--num-steps",
        256,
        "--total-timesteps",
        6144,
        "--eval-every",
        1024,
        "--eval-episodes",
        2,
        "--checkpoint-every",
        256,
        "--no-capture-video",
        "--no-cuda",
        "--env-backend",
        backend,
        "--runs-dir",
        runs_dir,
    ]
    run_dir = runs_dir / f"Hopper-v4__{script}__seed1"
    killed_at = kill_at(script, point, 2560, *args)["global_step"]
    assert 2560 <= killed_at < 6144
    (run_dir / "checkpoints" / "latest.pt.tmp123").write_bytes(b"half a checkpoint")  # as if killed mid-write

    result = run_script(script, *args, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming" in (run_dir / "logs" / "train.log").read_text()
    metrics, timings = read_run(run_dir)
    assert metrics["completed"] and metrics["global_step"] == 6144
    train_steps = metrics["train"]["global_step"]
    assert train_steps == sorted(train_steps) and len(train_steps) == len(set(train_steps)) > 20
    assert metrics["eval"]["global_step"] == [1024 * k for k in range(1, 7)]
    assert [row["iteration"] for row in timings] == list(range(1, 25))
    steps = tb_scalars(run_dir)
    assert steps["charts/SPS"] == [256 * k for k in range(1, 25)]  # TensorBoard purged the lost iterations
    assert steps["eval/mean_return"] == metrics["eval"]["global_step"]
    assert not list(run_dir.rglob("*.tmp*"))

    again = run_script(script, *args, "--resume")  # a completed run is done at once
    assert again.returncode == 0 and "already complete" in again.stdout
    assert read_run(run_dir)[0] == metrics


@pytest.mark.parametrize("script", PPO_SCRIPTS)
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(runs_dir, monkeypatch, script):
    module = importlib.import_module(script)
    poison_update(monkeypatch, module)
    args = module.Args(
        env_id="InvertedPendulum-v4",
        num_steps=128,
        num_minibatches=4,
        update_epochs=1,
        total_timesteps=1280,
        eval_every=0,
        checkpoint_every=128,
        runs_dir=str(runs_dir),
    )
    with pytest.raises(FloatingPointError, match="diverged"):
        module.main(args)
    run_dir = runs_dir / f"InvertedPendulum-v4__{script}__seed1"
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["global_step"] == 256 and all(torch.isfinite(v).all() for v in ckpt["agent"].values() if torch.is_tensor(v))
    assert read_run(run_dir)[0]["status"] == "diverged"


@pytest.mark.parametrize("script", PPO_SCRIPTS)
def test_learns_inverted_pendulum(runs_dir, script):
    """CleanRL's training return averages ~910 between 20k and 30k steps here, 1000 after 30k."""
    result = run_script(
        script,
        "--env-id",
        "InvertedPendulum-v4",
        "--total-timesteps",
        40960,
        "--eval-every",
        10240,
        "--eval-episodes",
        5,
        "--no-capture-video",
        "--no-cuda",
        "--runs-dir",
        runs_dir,
    )
    assert result.returncode == 0, result.stderr
    metrics, _ = read_run(runs_dir / f"InvertedPendulum-v4__{script}__seed1")
    train = metrics["train"]
    late = [r for s, r in zip(train["global_step"], train["episodic_return"]) if s > 30000]
    assert np.mean(late) >= 900, np.mean(late)  # a random policy scores ~5
    assert metrics["eval"]["mean_return"][-1] >= 950


@pytest.mark.parametrize("script", ["ppo_continuous", "grpo_continuous"])  # progress in iterations, and in env steps
def test_lr_schedule_cosine_sets_each_iterations_learning_rate(runs_dir, script):
    flags = ["--total-timesteps", 512, "--learning-rate", 0.001, "--lr-schedule", "cosine", "--eval-every", 0]
    result = run_script(script, *TINY[script], *flags, "--no-capture-video", "--exp-name", "x", "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    steps, lrs = tb_values(runs_dir / "Hopper-v4__x__seed1", "charts/learning_rate")
    before = [0, *steps[:-1]]  # an iteration's rate is set from the steps done before it
    assert len(steps) >= 3 and lrs == pytest.approx([0.001 * (0.5 + 0.5 * math.cos(math.pi * s / 512)) for s in before])


def test_each_timings_row_gives_each_phase_its_own_seconds_and_the_rows_add_up_to_the_wall_time(runs_dir, monkeypatch):
    """On a fake clock that only moves inside the rollout (1 s), the update (2 s), an evaluation (4 s) and a latest.pt
    (8 s, counted in the next row's io_s): each row holds exactly those, and the rows sum to metrics.json's wall time."""
    import time

    import ppo_continuous as ppo
    import runlib

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def taking(seconds, fn, only=None):
        def timed(*args, **kwargs):
            result = fn(*args, **kwargs)
            if only is None or only(*args, **kwargs):
                clock[0] += seconds
            return result

        return timed

    monkeypatch.setattr(ppo, "collect_rollout", taking(1.0, ppo.collect_rollout))
    monkeypatch.setattr(ppo, "ppo_update", taking(2.0, ppo.ppo_update))
    monkeypatch.setattr(runlib.Run, "evaluate", taking(4.0, runlib.Run.evaluate))
    monkeypatch.setattr(runlib.Run, "save", taking(8.0, runlib.Run.save, only=lambda run, name: name == "latest.pt"))
    args = ppo.Args(
        env_id="Hopper-v4", max_episode_steps=50, num_steps=128, num_minibatches=4, update_epochs=1, total_timesteps=768,
        eval_every=256, eval_episodes=1, checkpoint_every=384, capture_video=False, runs_dir=str(runs_dir),
    )  # fmt: skip
    ppo.main(args)
    metrics, timings = read_run(runs_dir / "Hopper-v4__ppo_continuous__seed1")
    evaluated = [256, 512, 768]
    saved_before = [512]  # latest.pt at 384 is timed in the next iteration's row (the one at 512)
    for row in timings:
        step = row["global_step"]
        assert (row["rollout_s"], row["update_s"]) == (1.0, 2.0)
        assert row["eval_s"] == (4.0 if step in evaluated else 0.0)
        assert row["io_s"] == (8.0 if step in saved_before else 0.0)
        assert row["time_s"] == 3.0 + row["eval_s"] + row["io_s"] and row["sps"] == 128 / row["time_s"]
    assert sum(row["time_s"] for row in timings) == metrics["wall_time_s"]  # the final latest.pt comes after both
