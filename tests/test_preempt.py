"""A signal (a cluster's preemption or time limit, Ctrl-C, Slurm's --signal) stops a run at the next safe point with its
last whole iteration saved, exit status 75; `--resume` then completes it with no gap and no duplicate in any curve.
(benchmark.sh's Slurm requeue of such a run is in test_benchmark.py.)"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY, read_run, run_script, tb_values

EXIT_INTERRUPTED = 75
ARGS = [*TINY["ppo_continuous"], "--total-timesteps", 2048, "--eval-every", 512, "--eval-episodes", 2]
ARGS += ["--no-capture-video"]


def signal_at(script, point, step, name, *args):
    command = [sys.executable, str(ROOT / "tests" / "signal_at.py"), script, point, str(step), name, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def assert_stopped_whole(run_dir, result, step, signame):
    """Exit 75, one log line, and latest.pt, metrics.json and timings.jsonl all at the same whole iteration."""
    assert result.returncode == EXIT_INTERRUPTED, result.stderr
    assert f"SIG{signame}: stopped; latest.pt holds step {step:,}, `--resume` continues (exit 75)" in result.stdout
    assert "Traceback" not in result.stderr
    metrics, timings = read_run(run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert metrics["status"] == "interrupted" and metrics["global_step"] == ckpt["global_step"] == step
    assert ckpt["metrics"] == metrics
    assert [row["iteration"] for row in timings] == list(range(1, ckpt["iteration"] + 1))
    assert timings[-1]["global_step"] == step
    assert max(metrics["train"]["global_step"], default=0) <= step and max(metrics["eval"]["global_step"], default=0) <= step
    assert not (run_dir / "checkpoints" / "best-next.pt").exists()  # best.pt is of the saved timeline


def assert_resumes_to_the_end(script, run_dir, args, total, eval_steps):
    result = run_script(script, *args, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    metrics, timings = read_run(run_dir)
    assert metrics["completed"] and metrics["status"] == "completed" and metrics["global_step"] == total
    assert [row["iteration"] for row in timings] == list(range(1, len(timings) + 1))
    assert timings[-1]["global_step"] == total
    train_steps = metrics["train"]["global_step"]
    assert train_steps == sorted(train_steps)
    assert metrics["eval"]["global_step"] == eval_steps
    assert tb_values(run_dir, "eval/mean_return")[0] == eval_steps  # TensorBoard: none twice


@pytest.mark.parametrize(
    "point, signame, saved",
    [
        ("rollout", "TERM", 768),  # in iteration 7's rollout: iteration 6 (768 steps) is the last whole one
        ("update", "USR1", 768),  # in iteration 7's update
        ("eval", "INT", 896),  # in the evaluation at step 1024, the end of iteration 8: iteration 7 is saved
    ],
)
def test_a_signal_stops_at_the_next_safe_point_and_the_resume_completes_the_run(tmp_path, point, signame, saved):
    args = [*ARGS, "--runs-dir", tmp_path]
    result = signal_at("ppo_continuous", point, 768, signame, *args)
    (run_dir,) = tmp_path.iterdir()
    assert_stopped_whole(run_dir, result, saved, signame)
    assert_resumes_to_the_end("ppo_continuous", run_dir, args, 2048, [512, 1024, 1536, 2048])


SCRIPT_ARGS = {
    "ppo_continuous": ["--total-timesteps", 6400],
    "ppo_beta_continuous": ["--total-timesteps", 6400],
    "grpo_continuous": ["--total-timesteps", 9000],
    "ppo_cnn_carracing": ["--total-timesteps", 640],
    "grpo_cnn_carracing": ["--total-timesteps", 1000],
}


@pytest.mark.parametrize("script, signame", list(zip(SCRIPT_ARGS, ["TERM", "INT", "USR1", "TERM", "USR1"])))
def test_every_script_stops_on_a_signal_from_outside_and_resumes(tmp_path, script, signame):
    """The signal comes from another process at whatever point the run is in: latest.pt, metrics.json and timings.jsonl
    agree, and the resume ends with all the steps."""
    args = [*TINY[script], *SCRIPT_ARGS[script], "--eval-every", 0, "--checkpoint-every", 10**6, "--no-capture-video"]
    args += ["--runs-dir", tmp_path]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(ROOT / f"{script}.py"), *map(str, args)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # a few iterations in: past the first metrics.json rewrites
        timings = list(tmp_path.glob("*/timings.jsonl"))
        if timings and len(timings[0].read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(getattr(signal, f"SIG{signame}"))
    out, err = process.communicate(timeout=300)
    (run_dir,) = tmp_path.iterdir()
    step = json.loads((run_dir / "metrics.json").read_text())["global_step"]
    assert step > 0
    assert_stopped_whole(run_dir, subprocess.CompletedProcess(command, process.returncode, out, err), step, signame)
    total = SCRIPT_ARGS[script][1]
    result = run_script(script, *args, "--resume")
    assert result.returncode == 0, result.stderr
    metrics, timings = read_run(run_dir)
    assert metrics["completed"] and metrics["global_step"] >= total > step
    assert [row["iteration"] for row in timings] == list(range(1, len(timings) + 1))


@pytest.mark.parametrize("script", list(SCRIPT_ARGS))
def test_every_rollout_has_a_safe_point_after_its_env_step(script):
    """The update's and evaluation's safe points are runlib's, shared; each script's rollout calls its own."""
    lines = (ROOT / f"{script}.py").read_text().splitlines()
    (i,) = [i for i, line in enumerate(lines) if ".step(env_action(" in line]
    assert lines[i + 1].strip().startswith("runlib.safe_point()")
