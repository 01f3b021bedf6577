"""--eval-checkpoint's refusals, and --track (Weights & Biases, in its offline mode). The evaluation of a saved policy
itself is checked on every script's smoke run (conftest.assert_eval_checkpoint); the code is plumbing, one text."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, assert_clean_error, kill_at, run_cli, run_script

TINY_RUN = [*TINY["ppo_continuous"], "--total-timesteps", 256]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """latest.pt of a tiny ppo_continuous.py run on Hopper-v4."""
    runs = tmp_path_factory.mktemp("runs")
    result = run_script("ppo_continuous", *TINY_RUN, "--eval-every", 0, "--no-capture-video", "--runs-dir", runs)
    assert result.returncode == 0, result.stderr
    return runs / "Hopper-v4__ppo_continuous__seed1" / "checkpoints" / "latest.pt"


def files(directory):
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "script, args, expected",
    [
        ("ppo_continuous", ["--env-id", "Walker2d-v4"], "a checkpoint of Hopper-v4 does not fit Walker2d-v4"),
        ("ppo_continuous", ["--hidden-sizes", "32"], "does not fit Hopper-v4 as configured"),
        ("ppo_beta_continuous", [], "(ppo_continuous.py's, format 2) is not a checkpoint of this version of ppo_beta"),
        ("grpo_cnn_carracing", [], "is not a checkpoint of this version of grpo_cnn_carracing.py"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(monkeypatch, capsys, checkpoint, script, args, expected):
    before = files(checkpoint.parent.parent)
    assert_clean_error(run_cli(monkeypatch, capsys, script, "--eval-checkpoint", checkpoint, *args), expected)
    assert files(checkpoint.parent.parent) == before


def test_a_damaged_or_missing_checkpoint_is_refused_in_one_line(monkeypatch, capsys, checkpoint, tmp_path):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(checkpoint.read_bytes()[:1000])
    for path in (damaged, tmp_path / "missing.pt"):
        result = run_cli(monkeypatch, capsys, "ppo_continuous", "--eval-checkpoint", path)
        assert_clean_error(result, f"cannot read checkpoint {path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.pt"]


def test_eval_checkpoint_takes_the_runs_arguments_and_every_flag_given_wins_even_at_its_default(monkeypatch, checkpoint):
    """The run had --num-steps 128 and --max-episode-steps 50. Given --num-steps 2048, the default, the evaluation
    must take 2048: a flag the user typed wins whatever its value (as --seed 1 on a seed-2 checkpoint must)."""
    import ppo_continuous

    seen = []
    for flags, num_steps in (([], 128), (["--num-steps", "2048"], 2048)):
        monkeypatch.setattr(sys, "argv", ["ppo_continuous.py", "--eval-checkpoint", str(checkpoint), *flags])
        ppo_continuous.cli(seen.append, ppo_continuous.Args, ppo_continuous.ALGO)
        assert (seen[-1].num_steps, seen[-1].max_episode_steps, seen[-1].eval_checkpoint) == (num_steps, 50, str(checkpoint))


def test_eval_checkpoint_writes_its_video_to_video_path(monkeypatch, capsys, checkpoint, tmp_path):
    video = tmp_path / "new" / "hopper.mp4"
    result = run_cli(monkeypatch, capsys, "ppo_continuous", "--eval-checkpoint", checkpoint, "--video-path", video)
    assert result.returncode == 0 and "on Hopper-v4: return " in result.stdout and " over 10 episodes" in result.stdout
    assert video.stat().st_size > 0 and not checkpoint.with_suffix(".mp4").exists()


def test_a_run_trained_on_envpool_is_evaluated_on_gymnasium_without_envpool(monkeypatch, capsys, checkpoint, tmp_path):
    import ppo_continuous
    import runlib

    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["args"]["env_backend"] = "envpool"
    torch.save(ckpt, tmp_path / "envpool.pt")

    def no_envpool(*_):
        raise ppo_continuous.UsageError("--env-backend envpool needs EnvPool, which is not installed")

    monkeypatch.setattr(runlib, "check_envpool_env", no_envpool)
    result = run_cli(monkeypatch, capsys, "ppo_continuous", "--eval-checkpoint", tmp_path / "envpool.pt", "--eval-episodes", 2)
    assert result.returncode == 0 and " over 2 episodes" in result.stdout, result.stderr


def test_track_sends_scalars_args_and_videos_to_wandb_and_a_resume_continues_the_run(monkeypatch, runs_dir):
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = [*TINY["ppo_continuous"], "--total-timesteps", 1024, "--eval-every", 512, "--eval-episodes", 1]
    args += ["--checkpoint-every", 256, "--track", "--runs-dir", runs_dir]
    run_dir = runs_dir / "Hopper-v4__ppo_continuous__seed1"
    assert 384 <= kill_at("ppo_continuous", "before_checkpoint", 384, *args)["global_step"] < 1024
    result = run_script("ppo_continuous", *args, "--resume")
    assert result.returncode == 0, result.stderr
    wandb_id = json.loads((run_dir / "metrics.json").read_text())["wandb_id"]
    offline_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(run.name.endswith(f"-{wandb_id}") for run in offline_runs)  # one W&B run
    record = (offline_runs[-1] / f"run-{wandb_id}.wandb").read_bytes()
    for key in ("charts/episodic_return", "losses/value_loss", "eval/mean_return", "videos/eval", "learning_rate"):
        assert key.encode() in record, key  # TensorBoard's scalars, the eval video, the args (W&B's config)
    assert list((offline_runs[-1] / "files" / "media").rglob("*.mp4"))


def test_track_without_a_wandb_login_is_one_line_that_says_how_to_go_on(runs_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"HOME": str(tmp_path)}  # no login
    command = [sys.executable, str(ROOT / "ppo_continuous.py"), *map(str, TINY_RUN), "--track", "--runs-dir", str(runs_dir)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    assert_clean_error(result, "--track: W&B did not start")
    assert "WANDB_MODE=offline, then --resume" in result.stderr


def test_without_track_wandb_is_not_imported(runs_dir):
    argv = ["ppo_continuous.py", *map(str, TINY_RUN), "--eval-every", "0", "--runs-dir", str(runs_dir)]
    code = f"import sys; sys.argv = {argv!r}; import ppo_continuous as m; m.cli(m.main, m.Args, m.ALGO)"
    code += "; print('wandb' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "False", result.stderr
