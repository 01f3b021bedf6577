"""ppo_cnn_carracing.py and grpo_cnn_carracing.py end to end on CarRacing-v3, on tiny budgets (its
frames are slow here): the run layout, resume after kill -9, the NaN stop. The command line and bad
input are in test_cli.py, the pieces in test_cnn_units.py."""

import importlib
import os
import subprocess
import sys

import gymnasium as gym
import pytest
import torch
import tyro

from conftest import (ROOT, TINY, assert_clean_error, assert_run_layout, assert_timings_add_up, kill_when, poison_update, read_run,
                      run_script, tb_scalars)
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


def needs(backend):
    if backend == "envpool":
        pytest.importorskip("envpool")


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_ppo_resume_after_kill_9_continues_without_gap_or_duplicate(runs_dir, backend):
    needs(backend)
    args = [*TINY["ppo_cnn_carracing"], "--total-timesteps", 320, "--eval-every", 160, "--eval-episodes", 1, "--checkpoint-every", 32,
            "--no-capture-video", "--no-cuda", "--runs-dir", runs_dir, "--env-backend", backend]
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
    assert metrics["args"]["env_backend"] == backend and all(length == 25 for length in train["episodic_length"])
    assert_timings_add_up(timings)


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_grpo_resume_after_kill_9_replays_the_uninterrupted_run_exactly(runs_dir, backend):
    """As grpo_continuous.py: groups start from seeds of (seed, iteration), so a resumed run is the
    uninterrupted run. The uninterrupted run steps its members in this process, the killed one in
    two workers: which process steps a member changes nothing. On EnvPool too: a member's pool is made
    with its group's seed each iteration."""
    needs(backend)
    args = [*TINY["grpo_cnn_carracing"], "--total-timesteps", 400, "--eval-every", 200, "--eval-episodes", 1,
            "--checkpoint-every", 1, "--no-capture-video", "--no-cuda", "--runs-dir", runs_dir, "--env-backend", backend]
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
    assert resumed["args"]["env_backend"] == backend
    assert_timings_add_up(resumed_timings)


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


@pytest.mark.parametrize("script", ["ppo_cnn_carracing", "grpo_cnn_carracing"])
def test_env_backend_envpool_without_envpool_is_one_line_and_writes_nothing(tmp_path, script):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "envpool.py").write_text("raise ImportError('No module named envpool')\n")  # as if it were not installed
    result = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), "--env-backend", "envpool", "--runs-dir", tmp_path / "runs"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(shadow), "PYTHONWARNINGS": "ignore"})
    assert_clean_error(result, "--env-backend envpool needs EnvPool, which is not installed: pip install envpool (Linux x86_64 wheels)")
    assert result.returncode == 2 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("script", ["ppo_cnn_carracing", "grpo_cnn_carracing"])
def test_env_backend_envpool_refuses_an_env_envpool_does_not_have(script):
    pytest.importorskip("envpool")
    from gymnasium.envs.box2d.car_racing import CarRacing

    module = importlib.import_module(script)
    if "MyCarRacing-v0" not in gym.registry:
        gym.register("MyCarRacing-v0", entry_point=CarRacing, max_episode_steps=1000)
    module.check_env(module.Args(env_id="MyCarRacing-v0"))  # gymnasium has it
    with pytest.raises(module.UsageError, match="EnvPool has no env 'MyCarRacing-v0': use --env-backend gymnasium"):
        module.check_env(module.Args(env_id="MyCarRacing-v0", env_backend="envpool"))


@pytest.mark.parametrize("script", ["ppo_cnn_carracing", "grpo_cnn_carracing"])
@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_env_rate_and_a_short_run_as_the_speed_benchmark_calls_them(runs_dir, script, backend):
    """The benchmark imports the script, calls env_rate(args, n) on args parsed by tyro and checked,
    then runs the script without evaluation and reads metrics.json's sps: both in agent steps per second."""
    needs(backend)
    module = importlib.import_module(script)
    flags = [*map(str, TINY[script]), "--env-backend", backend]
    args = tyro.cli(module.Args, args=flags)
    module.check_args(args)
    rate = module.env_rate(args, 64)
    assert 0 < rate < float("inf")
    if backend == "envpool":
        result = run_script(script, *flags, "--total-timesteps", 64, "--eval-every", 0, "--no-capture-video", "--runs-dir", runs_dir)
        assert result.returncode == 0, result.stderr
        metrics, timings = read_run(runs_dir / RUN_DIR[script])
        assert metrics["completed"] and metrics["global_step"] >= 64 and 0 < metrics["sps"] < rate  # training adds the network's time
        assert metrics["eval"]["global_step"] == [] and not list((runs_dir / RUN_DIR[script] / "videos").iterdir())
        assert_timings_add_up(timings)


@pytest.mark.parametrize("script, update, rollout, kwargs", [
    ("ppo_cnn_carracing", "ppo_update", "collect_rollout", {"num_envs": 1, "num_steps": 16, "num_minibatches": 2}),
    ("grpo_cnn_carracing", "grpo_update", "collect_group_rollouts", {"num_groups": 1, "group_size": 2, "env_workers": 1}),
])
def test_the_update_runs_on_update_threads_and_acting_on_torch_threads(runs_dir, monkeypatch, script, update, rollout, kwargs):
    module = importlib.import_module(script)
    threads = {"update": set(), "rollout": set()}
    for name, phase in ((update, "update"), (rollout, "rollout")):
        def spy(*a, real=getattr(module, name), phase=phase, **kw):
            threads[phase].add(torch.get_num_threads())
            return real(*a, **kw)
        monkeypatch.setattr(module, name, spy)
    before = torch.get_num_threads()
    module.main(module.Args(max_episode_steps=32, frame_skip=2, update_epochs=1, total_timesteps=48, eval_every=0, cuda=False,
                            torch_threads=1, update_threads=3, capture_video=False, runs_dir=str(runs_dir), **kwargs))
    torch.set_num_threads(before)
    assert threads == {"update": {3}, "rollout": {1}}
    assert module.Args().update_threads == module.Args().torch_threads == 1  # more threads only when asked: a shared machine
