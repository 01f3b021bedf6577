"""ppo_cnn_carracing.py and grpo_cnn_carracing.py end to end on CarRacing-v3, on tiny budgets (its frames are slow here):
the run layout, resume after kill -9, the NaN stop, EnvPool's refusals. The command line and bad input are in
test_cli.py, the pieces in test_cnn_units.py."""

import importlib
import os
import subprocess
import sys

import gymnasium as gym
import pytest
import torch

from conftest import (
    ROOT,
    TINY,
    assert_clean_error,
    assert_run_layout,
    kill_at,
    poison_update,
    read_run,
    run_script,
    tb_scalars,
)

SCRIPTS = ["ppo_cnn_carracing", "grpo_cnn_carracing"]
RUN_DIR = {
    "ppo_cnn_carracing": "CarRacing-v3__ppo_cnn_carracing__seed1",
    "grpo_cnn_carracing": "CarRacing-v3__grpo_cnn_carracing_g2__seed1",
}  # --group-size 2
CHARTS = (
    "charts/episodic_return charts/episodic_length charts/SPS charts/learning_rate eval/mean_return eval/std_return".split()
)
QUIET = ["--no-capture-video", "--no-cuda"]


def needs(backend):
    if backend == "envpool":
        pytest.importorskip("envpool")


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_writes_the_whole_run_layout(runs_dir, script):
    flags = "--total-timesteps 128 --eval-every 64 --eval-episodes 2 --checkpoint-every 32".split()
    result = run_script(script, *TINY[script], *flags, "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    run_dir = runs_dir / RUN_DIR[script]
    metrics, timings = read_run(run_dir)
    eval_steps = metrics["eval"]["global_step"]
    assert len(eval_steps) == 2 and eval_steps[-1] == metrics["global_step"]
    assert_run_layout(run_dir, script, eval_steps)
    assert metrics["args"]["frame_skip"] == 2 and max(metrics["train"]["episodic_length"]) == 25  # 50 frames, 2 a step
    steps = tb_scalars(run_dir)
    tags = CHARTS + importlib.import_module(script).LOSS_STATS
    assert set(tags) <= set(steps), set(tags) - set(steps)
    assert steps["charts/SPS"] == [row["global_step"] for row in timings]
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["agent"]["actor_trunk.convs.0.weight"].dim() == 4  # the CNN is what was trained
    log = (run_dir / "logs" / "train.log").read_text()
    assert " steps on cpu" in log and "CUDA" not in log  # --cuda is off by default, as in every script


@pytest.mark.parametrize("backend, point", [("gymnasium", "before_checkpoint"), ("envpool", "before_row")])
def test_ppo_resume_after_kill_9_continues_without_gap_or_duplicate(runs_dir, backend, point):
    """Killed at an exact point of the bookkeeping (tests/kill_at.py): with metrics.json, TensorBoard and timings.jsonl
    ahead of latest.pt, which the resume rewinds them to."""
    needs(backend)
    flags = "--total-timesteps 320 --eval-every 160 --eval-episodes 1 --checkpoint-every 64".split()
    args = [*TINY["ppo_cnn_carracing"], *flags, *QUIET, "--runs-dir", runs_dir, "--env-backend", backend]
    run_dir = runs_dir / RUN_DIR["ppo_cnn_carracing"]
    killed = kill_at("ppo_cnn_carracing", point, 96, *args)["global_step"]
    latest = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["global_step"]
    assert 0 < latest < killed < 320  # killed at the step of the metrics.json it left, past latest.pt
    (run_dir / "checkpoints" / "latest.pt.tmp123").write_bytes(b"half a checkpoint")  # as if killed mid-write

    result = run_script("ppo_cnn_carracing", *args, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming" in (run_dir / "logs" / "train.log").read_text()
    metrics, timings = read_run(run_dir)
    assert metrics["completed"] and metrics["global_step"] == 320
    train = metrics["train"]
    episodes = list(zip(train["global_step"], train["episodic_return"]))  # both envs end an episode every 25 steps
    assert train["global_step"] == sorted(train["global_step"]) and len(set(episodes)) == len(episodes) >= 6
    assert metrics["eval"]["global_step"] == [160, 320]
    assert [row["iteration"] for row in timings] == list(range(1, 11))
    assert tb_scalars(run_dir)["charts/SPS"] == [32 * k for k in range(1, 11)]  # TensorBoard purged the lost iterations
    assert not list(run_dir.rglob("*.tmp*"))
    assert metrics["args"]["env_backend"] == backend and all(length == 25 for length in train["episodic_length"])


@pytest.mark.parametrize("backend, point", [("gymnasium", "after_best"), ("envpool", "after_checkpoint")])
def test_grpo_resume_after_kill_9_replays_the_uninterrupted_run_exactly(runs_dir, backend, point):
    """As grpo_continuous.py: groups start from seeds of (seed, iteration), so a resumed run is the uninterrupted run,
    killed at an exact point of the bookkeeping (tests/kill_at.py) or not; after_best leaves an evaluation's new best as
    best-next.pt, ahead of latest.pt, which the resume must drop. The killed run steps its members in subprocesses
    (--vector-mode async), the uninterrupted one in this process: which process steps a member changes nothing."""
    needs(backend)
    flags = "--total-timesteps 300 --eval-every 200 --eval-episodes 1 --checkpoint-every 1".split()
    args = [*TINY["grpo_cnn_carracing"], *flags, *QUIET, "--runs-dir", runs_dir, "--env-backend", backend]
    run_dir = runs_dir / "CarRacing-v3__killed__seed1"
    killed = [*args, "--exp-name", "killed", "--vector-mode", "async"]
    # an iteration is 100 steps (2 groups of 2, 25 steps each): killed in the second, past the first's checkpoint
    metrics = kill_at("grpo_cnn_carracing", point, 200, *killed)
    latest = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["global_step"]
    assert (latest, metrics["global_step"]) == ((100, 100) if point == "after_best" else (200, 200))
    assert (run_dir / "checkpoints" / "best-next.pt").exists()  # ahead of latest.pt (after_best) or caught up with it
    assert run_script("grpo_cnn_carracing", *args, "--exp-name", "whole").returncode == 0
    result = run_script("grpo_cnn_carracing", *killed, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming" in (run_dir / "logs" / "train.log").read_text()

    (whole, whole_timings), (resumed, resumed_timings) = (
        read_run(runs_dir / f"CarRacing-v3__{name}__seed1") for name in ("whole", "killed")
    )
    assert resumed["completed"] and (resumed["train"], resumed["eval"]) == (whole["train"], whole["eval"])
    assert len(whole["train"]["episodic_return"]) == 12 and len(set(whole["train"]["episodic_return"])) > 2
    iteration_steps = [row["global_step"] for row in whole_timings]
    assert [row["global_step"] for row in resumed_timings] == iteration_steps == tb_scalars(run_dir)["charts/SPS"]
    assert resumed["args"]["env_backend"] == backend
    for name in ("latest.pt", "best.pt"):  # best.pt: the same evaluation's policy, not one of a lost timeline
        ckpts = [
            torch.load(runs_dir / f"CarRacing-v3__{e}__seed1" / "checkpoints" / name, weights_only=True)
            for e in ("whole", "killed")
        ]
        assert ckpts[1]["global_step"] == ckpts[0]["global_step"], name
        for key in ("agent", "ref_agent"):
            assert all(torch.equal(ckpts[1][key][k], v) for k, v in ckpts[0][key].items()), (name, key)
    assert not (run_dir / "checkpoints" / "best-next.pt").exists()


@pytest.mark.parametrize(
    "script, kwargs",
    [
        ("ppo_cnn_carracing", {"num_envs": 1, "num_steps": 16, "num_minibatches": 2}),
        ("grpo_cnn_carracing", {"num_groups": 1, "group_size": 2}),
    ],
)
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(runs_dir, monkeypatch, script, kwargs):
    module = importlib.import_module(script)
    poison_update(monkeypatch, module)
    tiny = dict(max_episode_steps=32, frame_skip=2, update_epochs=1, total_timesteps=160, eval_every=0, checkpoint_every=1)
    args = module.Args(**tiny, cuda=False, runs_dir=str(runs_dir), **kwargs)
    with pytest.raises(FloatingPointError, match="diverged"):
        module.main(args)
    run_dir = runs_dir / RUN_DIR[script]
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["iteration"] == 2 and all(torch.isfinite(v).all() for v in ckpt["agent"].values())
    assert read_run(run_dir)[0]["status"] == "diverged"


@pytest.mark.parametrize("script", SCRIPTS)
def test_env_backend_envpool_without_envpool_is_one_line_and_writes_nothing(tmp_path, script):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "envpool.py").write_text("raise ImportError('No module named envpool')\n")  # as if it were not installed
    result = subprocess.run(
        [sys.executable, str(ROOT / f"{script}.py"), "--env-backend", "envpool", "--runs-dir", tmp_path / "runs"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(shadow), "PYTHONWARNINGS": "ignore"},
    )
    assert_clean_error(result, "--env-backend envpool needs EnvPool, which is not installed: pip install envpool")
    assert result.returncode == 2 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_env_backend_envpool_refuses_an_env_envpool_does_not_have(script):
    pytest.importorskip("envpool")
    from gymnasium.envs.box2d.car_racing import CarRacing

    module = importlib.import_module(script)
    if "MyCarRacing-v0" not in gym.registry:
        gym.register("MyCarRacing-v0", entry_point=CarRacing, max_episode_steps=1000)
    module.check_env(module.Args(env_id="MyCarRacing-v0"))  # gymnasium has it
    with pytest.raises(module.UsageError, match="EnvPool has no env 'MyCarRacing-v0': use --env-backend gymnasium"):
        module.check_env(module.Args(env_id="MyCarRacing-v0", env_backend="envpool"))
