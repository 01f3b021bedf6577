"""ppo_continuous.py end to end: the run layout, resume after kill -9, bad input, NaN stop, learning."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import fields

import numpy as np
import pytest
import torch

import ppo_continuous as ppo
from conftest import ROOT, run_script

TINY = ["--env-id", "Hopper-v4", "--max-episode-steps", 50, "--num-steps", 128, "--num-minibatches", 4, "--update-epochs", 2]
TB_TAGS = ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate", "losses/value_loss",
           "losses/policy_loss", "losses/entropy", "losses/old_approx_kl", "losses/approx_kl", "losses/clipfrac",
           "losses/explained_variance", "eval/mean_return", "eval/std_return"]


def read_run(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    timings = [json.loads(line) for line in (run_dir / "timings.jsonl").read_text().splitlines()]
    return metrics, timings


def tb_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_smoke_writes_the_whole_run_layout(runs_dir):
    result = run_script("ppo_continuous", *TINY, "--num-envs", 2, "--total-timesteps", 1024, "--eval-every", 512,
                        "--eval-episodes", 2, "--checkpoint-every", 256, "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    run_dir = runs_dir / "Hopper-v4__ppo_continuous__seed1"
    metrics, timings = read_run(run_dir)
    assert {k: metrics[k] for k in ("env_id", "algo", "exp_name", "seed", "group_size", "global_step", "total_timesteps", "completed")} == {
        "env_id": "Hopper-v4", "algo": "ppo_continuous", "exp_name": "ppo_continuous", "seed": 1, "group_size": None,
        "global_step": 1024, "total_timesteps": 1024, "completed": True}
    assert set(metrics["args"]) == {f.name for f in fields(ppo.Args)} and metrics["args"]["batch_size"] == 256
    assert metrics["sps"] > 0
    train = metrics["train"]
    assert len(train["global_step"]) == len(train["episodic_return"]) == len(train["episodic_length"]) > 0
    assert all(1 <= n <= 50 for n in train["episodic_length"]) and train["global_step"] == sorted(train["global_step"])
    assert metrics["eval"]["global_step"] == [512, 1024] and len(metrics["eval"]["std_return"]) == 2

    assert [row["iteration"] for row in timings] == [1, 2, 3, 4] and timings[-1]["global_step"] == 1024
    for row in timings:
        phases = row["rollout_s"] + row["update_s"] + row["eval_s"] + row["io_s"]
        assert abs(phases - row["time_s"]) <= 0.03 * row["time_s"]
        assert row["env_step_s"] + row["policy_forward_s"] <= row["rollout_s"] and row["sps"] > 0

    log = (run_dir / "logs" / "train.log").read_text()
    assert "step 1,024/1,024 (100%)" in log and "done:" in log
    if not torch.cuda.is_available():
        assert "CUDA is not available: training on CPU" in log
    for name in ("latest.pt", "best.pt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, weights_only=False)
        assert {"agent", "optimizer", "reward_rms", "rng", "iteration", "global_step", "metrics", "args"} <= set(ckpt)
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["global_step"] == 1024

    import imageio.v3 as iio

    videos = sorted((run_dir / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["eval-step000000512.mp4", "eval-step000001024.mp4"]
    frames = iio.imread(videos[-1])
    assert frames.ndim == 4 and frames.shape[0] >= 2 and frames.std() > 1  # a real, non-blank film

    steps = tb_scalars(run_dir)
    assert set(TB_TAGS) <= set(steps), set(TB_TAGS) - set(steps)
    assert steps["charts/SPS"] == [256, 512, 768, 1024]
    assert not list(run_dir.rglob("*.tmp*"))  # atomic writes leave no temp files


def test_help_documents_every_field():
    result = subprocess.run([sys.executable, str(ROOT / "ppo_continuous.py"), "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 0
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.stdout).split())
    for f in fields(ppo.Args):
        assert f"--{f.name.replace('_', '-')}" in text, f.name
    docs = re.findall(r'^    (\w+): .*\n    """(.+?)"""', (ROOT / "ppo_continuous.py").read_text(), re.M)
    assert {name for name, _ in docs} == {f.name for f in fields(ppo.Args)}  # every field has a docstring ...
    for name, doc in docs:
        assert " ".join(doc.split()[:5]) in text, name  # ... and --help shows it


def test_sync_and_async_vector_envs_give_the_same_run(runs_dir):
    common = [*TINY, "--num-envs", 2, "--total-timesteps", 512, "--eval-every", 0, "--runs-dir", runs_dir, "--no-cuda"]
    for mode in ("sync", "async"):
        assert run_script("ppo_continuous", *common, "--vector-mode", mode, "--exp-name", mode).returncode == 0
    sync, _ = read_run(runs_dir / "Hopper-v4__sync__seed1")
    asyn, _ = read_run(runs_dir / "Hopper-v4__async__seed1")
    assert sync["train"] == asyn["train"] and len(sync["train"]["episodic_return"]) > 4


def test_resume_after_kill_9_continues_without_gap_or_duplicate(runs_dir):
    args = [*TINY, "--num-steps", 256, "--total-timesteps", 6144, "--eval-every", 1024, "--eval-episodes", 2,
            "--checkpoint-every", 256, "--no-capture-video", "--no-cuda", "--runs-dir", runs_dir]
    run_dir = runs_dir / "Hopper-v4__ppo_continuous__seed1"
    proc = subprocess.Popen([sys.executable, str(ROOT / "ppo_continuous.py"), *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads((run_dir / "metrics.json").read_text())["global_step"] >= 2560:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((run_dir / "metrics.json").read_text())["global_step"]
    assert 0 < killed_at < 6144
    (run_dir / "checkpoints" / "latest.pt.tmp123").write_bytes(b"half a checkpoint")  # as if killed mid-write

    result = run_script("ppo_continuous", *args, "--resume")
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

    again = run_script("ppo_continuous", *args, "--resume")  # a completed run is done at once
    assert again.returncode == 0 and "already complete" in again.stdout
    assert read_run(run_dir)[0] == metrics


def assert_clean_error(result, expected):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("args, expected", [
    (["--env-id", "CartPole-v1"], "action space"),
    (["--env-id", "CarRacing-v3"], "observations of shape (96, 96, 3)"),
    (["--env-id", "Hoppper-v9"], "cannot make env 'Hoppper-v9'"),
    (["--total-timesteps", "0"], "--total-timesteps must be positive"),
    (["--num-envs", "-1"], "--num-envs must be positive"),
    (["--num-minibatches", "3"], "does not divide"),
    (["--total-timesteps", "1000"], "less than one batch"),
    (["--learning-rate", "-1e-3"], "--learning-rate must be positive"),
    (["--hidden-sizes", "64", "0"], "--hidden-sizes entry must be positive"),
    (["--exp-name", "a/b"], "--exp-name must be a non-empty name"),
    (["--vector-mode", "threads"], "invalid choice 'threads' for argument '--vector-mode'"),
    (["--total-timesteps", "1e6x"], "--total-timesteps"),
    (["--no-such-flag"], "Unrecognized options: --no-such-flag"),
])
def test_bad_input_is_one_line_and_writes_nothing(runs_dir, args, expected):
    assert_clean_error(run_script("ppo_continuous", *args, "--runs-dir", runs_dir), expected)
    assert not runs_dir.exists()


def test_existing_run_and_bad_resume_are_refused_and_nothing_is_touched(runs_dir):
    run_dir = runs_dir / "Hopper-v4__ppo_continuous__seed1"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"not a checkpoint")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert_clean_error(run_script("ppo_continuous", "--runs-dir", runs_dir), "pass --resume")
    assert_clean_error(run_script("ppo_continuous", "--runs-dir", runs_dir, "--resume"), "cannot read checkpoint")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    run_x = [*TINY, "--total-timesteps", 256, "--eval-every", 0, "--no-cuda", "--runs-dir", runs_dir, "--exp-name", "x", "--resume"]
    fresh = run_script("ppo_continuous", *run_x)  # --resume without a checkpoint starts afresh
    assert fresh.returncode == 0 and read_run(runs_dir / "Hopper-v4__x__seed1")[0]["completed"]
    other_lr = run_script("ppo_continuous", *run_x, "--learning-rate", "0.1")
    assert_clean_error(other_lr, "--learning-rate 0.0003 -> 0.1")


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(runs_dir, monkeypatch):
    real_update, calls = ppo.ppo_update, []

    def poisoned_update(agent, *a):
        stats = real_update(agent, *a)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                agent.actor_logstd.fill_(float("nan"))
        return stats

    monkeypatch.setattr(ppo, "ppo_update", poisoned_update)
    args = ppo.Args(env_id="InvertedPendulum-v4", num_steps=128, num_minibatches=4, update_epochs=1, total_timesteps=1280,
                    eval_every=0, checkpoint_every=128, cuda=False, runs_dir=str(runs_dir))
    with pytest.raises(ppo.Diverged, match="diverged"):
        ppo.main(args)
    run_dir = runs_dir / "InvertedPendulum-v4__ppo_continuous__seed1"
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["global_step"] == 256 and all(torch.isfinite(v).all() for v in ckpt["agent"].values() if torch.is_tensor(v))
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "diverged"


def test_learns_inverted_pendulum(runs_dir):
    """CleanRL's training return averages ~910 between 20k and 30k steps here, 1000 after 30k."""
    result = run_script("ppo_continuous", "--env-id", "InvertedPendulum-v4", "--total-timesteps", 40960, "--eval-every", 10240,
                        "--eval-episodes", 5, "--no-capture-video", "--no-cuda", "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    metrics, _ = read_run(runs_dir / "InvertedPendulum-v4__ppo_continuous__seed1")
    train = metrics["train"]
    late = [r for s, r in zip(train["global_step"], train["episodic_return"]) if s > 30000]
    assert np.mean(late) >= 900, np.mean(late)  # a random policy scores ~5
    assert metrics["eval"]["mean_return"][-1] >= 950
