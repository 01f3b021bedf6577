"""ppo_cnn_carracing.py and grpo_cnn_carracing.py end to end on CarRacing-v3, on tiny budgets (its
frames are slow here): the run layout, resume after kill -9, the NaN stop. The command line and bad
input are in test_cli.py, the pieces in test_cnn_units.py."""

import importlib
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, assert_run_layout, kill_when, poison_update, read_run, run_script, tb_scalars
from test_grpo_runs import TB_TAGS as GRPO_TB_TAGS
from test_ppo_runs import TB_TAGS as PPO_TB_TAGS

RUN_DIR = {"ppo_cnn_carracing": "CarRacing-v3__ppo_cnn_carracing__seed1",
           "grpo_cnn_carracing": "CarRacing-v3__grpo_cnn_carracing_g2__seed1"}  # --group-size 2
TB_TAGS = {"ppo_cnn_carracing": PPO_TB_TAGS, "grpo_cnn_carracing": GRPO_TB_TAGS}


def start_killable(script, args):
    return subprocess.Popen([sys.executable, str(ROOT / f"{script}.py"), *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("script", ["ppo_cnn_carracing", "grpo_cnn_carracing"])
def test_smoke_writes_the_whole_run_layout(runs_dir, script):
    result = run_script(script, *TINY[script], "--total-timesteps", 128, "--eval-every", 64, "--eval-episodes", 2,
                        "--checkpoint-every", 32, "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    run_dir = runs_dir / RUN_DIR[script]
    metrics, timings = read_run(run_dir)
    eval_steps = metrics["eval"]["global_step"]
    assert len(eval_steps) == 2 and eval_steps[-1] == metrics["global_step"]
    assert_run_layout(run_dir, script, eval_steps)
    assert metrics["args"]["frame_skip"] == 2 and max(metrics["train"]["episodic_length"]) == 25  # 50 frames, 2 a step
    steps = tb_scalars(run_dir)
    assert set(TB_TAGS[script]) <= set(steps), set(TB_TAGS[script]) - set(steps)
    assert steps["charts/SPS"] == [row["global_step"] for row in timings]
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert any(k.startswith("actor_trunk.convs.0.") for k in ckpt["agent"])  # the CNN is what was trained


def test_ppo_resume_after_kill_9_continues_without_gap_or_duplicate(runs_dir):
    args = [*TINY["ppo_cnn_carracing"], "--total-timesteps", 320, "--eval-every", 160, "--eval-episodes", 1, "--checkpoint-every", 32,
            "--no-capture-video", "--no-cuda", "--runs-dir", runs_dir]
    run_dir = runs_dir / RUN_DIR["ppo_cnn_carracing"]
    assert 0 < kill_when(start_killable("ppo_cnn_carracing", args), run_dir, 96) < 320
    (run_dir / "checkpoints" / "latest.pt.tmp123").write_bytes(b"half a checkpoint")  # as if killed mid-write

    result = run_script("ppo_cnn_carracing", *args, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming" in (run_dir / "logs" / "train.log").read_text()
    metrics, timings = read_run(run_dir)
    assert metrics["completed"] and metrics["global_step"] == 320
    train = metrics["train"]
    episodes = list(zip(train["global_step"], train["episodic_return"]))  # both envs end an episode every 50 steps
    assert train["global_step"] == sorted(train["global_step"]) and len(set(episodes)) == len(episodes) >= 6
    assert metrics["eval"]["global_step"] == [160, 320]
    assert [row["iteration"] for row in timings] == list(range(1, 11))
    assert tb_scalars(run_dir)["charts/SPS"] == [32 * k for k in range(1, 11)]  # TensorBoard purged the lost iterations
    assert not list(run_dir.rglob("*.tmp*"))


def test_grpo_resume_after_kill_9_replays_the_uninterrupted_run_exactly(runs_dir):
    """As grpo_continuous.py: groups start from seeds of (seed, iteration), so a resumed run is the
    uninterrupted run. The uninterrupted run steps its members in this process, the killed one in
    two workers: which process steps a member changes nothing."""
    args = [*TINY["grpo_cnn_carracing"], "--total-timesteps", 400, "--eval-every", 200, "--eval-episodes", 1,
            "--checkpoint-every", 1, "--no-capture-video", "--no-cuda", "--runs-dir", runs_dir]
    assert run_script("grpo_cnn_carracing", *args, "--exp-name", "whole", "--env-workers", 1).returncode == 0
    run_dir = runs_dir / "CarRacing-v3__killed__seed1"
    assert 0 < kill_when(start_killable("grpo_cnn_carracing", [*args, "--exp-name", "killed"]), run_dir, 100) < 400
    result = run_script("grpo_cnn_carracing", *args, "--exp-name", "killed", "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming" in (run_dir / "logs" / "train.log").read_text()

    (whole, whole_timings), (resumed, resumed_timings) = (read_run(runs_dir / f"CarRacing-v3__{name}__seed1")
                                                          for name in ("whole", "killed"))
    assert resumed["completed"] and (resumed["train"], resumed["eval"]) == (whole["train"], whole["eval"])
    assert len(whole["train"]["episodic_return"]) == 16 and len(set(whole["train"]["episodic_return"])) > 2
    iteration_steps = [row["global_step"] for row in whole_timings]
    assert [row["global_step"] for row in resumed_timings] == iteration_steps == tb_scalars(run_dir)["charts/SPS"]


@pytest.mark.parametrize("script, update, kwargs", [
    ("ppo_cnn_carracing", "ppo_update", {"num_envs": 1, "num_steps": 16, "num_minibatches": 2}),
    ("grpo_cnn_carracing", "grpo_update", {"num_groups": 1, "group_size": 2, "env_workers": 1}),
])
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(runs_dir, monkeypatch, script, update, kwargs):
    module = importlib.import_module(script)
    poison_update(monkeypatch, module, update)
    args = module.Args(max_episode_steps=32, frame_skip=2, update_epochs=1, total_timesteps=160, eval_every=0, checkpoint_every=1,
                       cuda=False, torch_threads=1, runs_dir=str(runs_dir), **kwargs)
    with pytest.raises(module.Diverged, match="diverged"):
        module.main(args)
    run_dir = runs_dir / RUN_DIR[script]
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["iteration"] == 2 and all(torch.isfinite(v).all() for v in ckpt["agent"].values() if torch.is_tensor(v))
    assert read_run(run_dir)[0]["status"] == "diverged"
