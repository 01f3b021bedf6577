"""A resumed PPO run is the uninterrupted run: the state it restores (weights, optimizer, both normalizers, RNG, learning
rate) is the uninterrupted run's at the same iteration, best.pt never comes from a timeline the resume threw away, and the
envs restart from seeds no other seed of a benchmark uses. (GRPO's kill tests are in test_grpo_runs.py.)"""

import copy

import pytest
import torch
import tyro

import envlib
import ppo_continuous as ppo
import runlib
from conftest import TINY, kill_at

ARGS = [*TINY["ppo_continuous"], "--num-envs", 2, "--num-steps", 128, "--total-timesteps", 2048]
ARGS += ["--eval-every", 0, "--checkpoint-every", 256, "--no-capture-video"]


class Stop(Exception):
    """Ends an in-process run where a test has seen what it needs."""


def snapshot(run):
    """Everything a resume must restore, as plain tensors and arrays."""
    state = {k: copy.deepcopy(v.state_dict()) for k, v in run.state.items()}
    return state, torch.get_rng_state(), float(run.optimizer.param_groups[0]["lr"])


def assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_a_resumed_run_restores_the_uninterrupted_runs_whole_state(tmp_path, monkeypatch):
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    kill_at("ppo_continuous", "after_checkpoint", 1024, *ARGS, "--runs-dir", killed_dir)  # a real kill -9
    snapshots = {}
    real_save, real_restore = runlib.Run.save, runlib.Run.restore

    def save(run, name):  # the uninterrupted run, at the checkpoint the killed run left
        real_save(run, name)
        if name == "latest.pt" and run.global_step == 1024:
            snapshots["whole"] = snapshot(run)
            raise Stop

    def restore(run, **state):  # the resumed run, once it has restored its state
        real_restore(run, **state)
        if run.ckpt is not None:
            snapshots["resumed"] = snapshot(run)
            raise Stop

    monkeypatch.setattr(runlib.Run, "save", save)
    monkeypatch.setattr(runlib.Run, "restore", restore)
    for runs_dir, extra in ((whole_dir, []), (killed_dir, ["--resume"])):
        with pytest.raises(Stop):
            ppo.main(tyro.cli(ppo.Args, args=[*map(str, ARGS), "--runs-dir", str(runs_dir), *extra]))
    (whole_state, whole_rng, whole_lr), (state, rng, lr) = snapshots["whole"], snapshots["resumed"]
    assert set(state) == {"agent", "optimizer", "obs_norm", "reward_scaler"}
    assert whole_state["optimizer"]["state"] and whole_state["obs_norm"]["count"] > 1000  # something to restore
    assert_same(state, whole_state)
    assert torch.equal(rng, whole_rng) and lr == whole_lr


def test_the_reward_scalers_returns_in_flight_restart_with_the_episodes(tmp_path):
    """The envs cannot be restored, so a resume starts new episodes: their discounted returns start at 0, not at the sums
    of the killed run's episodes."""
    kill_at("ppo_continuous", "after_checkpoint", 512, *ARGS, "--runs-dir", tmp_path)
    (run_dir,) = tmp_path.iterdir()
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    scaler = envlib.RewardScaler(2, 0.99, 10.0)
    scaler.returns[:] = 5.0  # as the killed run's episodes left them
    scaler.load_state_dict(ckpt["reward_scaler"])
    assert scaler.returns.tolist() == [0.0, 0.0] and scaler.rms.count > 500


@pytest.mark.parametrize("kill", ["after_best", "between_latest_and_best"])
def test_best_pt_never_comes_from_a_timeline_the_resume_threw_away(tmp_path, monkeypatch, kill):
    """Every evaluation is a new best here. Killed after the evaluation at 1,280 wrote its best (latest.pt holds 1,024),
    the resume keeps the best of 1,024; killed after latest.pt at 1,024 but before its best became best.pt, the resume
    keeps that best. best.pt holds the metrics of its own step."""
    evaluations = iter(range(10**6))
    monkeypatch.setattr(runlib, "run_episode", lambda *a, **k: float(next(evaluations)))
    real_save = runlib.Run.save

    def save(run, name):
        real_save(run, name)
        if kill == "after_best" and name == "best-next.pt" and run.global_step == 1280:
            raise Stop
        if kill == "between_latest_and_best" and name == "latest.pt" and run.global_step == 1024:
            raise Stop

    monkeypatch.setattr(runlib.Run, "save", save)
    args = ppo.Args(
        env_id="Hopper-v4", max_episode_steps=50, num_steps=128, num_minibatches=4, update_epochs=1, num_envs=2,
        total_timesteps=2048, eval_every=256, eval_episodes=1, checkpoint_every=1024, capture_video=False,
        runs_dir=str(tmp_path),
    )  # fmt: skip
    with pytest.raises(Stop):
        ppo.main(args)
    checkpoints = tmp_path / "Hopper-v4__ppo_continuous__seed1" / "checkpoints"
    assert (checkpoints / "best-next.pt").exists()
    args.resume = True
    run = runlib.Run(args, "ppo_continuous", total_steps=2048)  # the resume, up to where it rewinds the run directory
    run.close()
    best = torch.load(checkpoints / "best.pt", weights_only=True)
    assert not (checkpoints / "best-next.pt").exists()
    assert best["global_step"] == 1024 == run.global_step
    assert best["metrics"]["global_step"] == 1024 and best["metrics"]["eval"]["global_step"][-1] == 1024
    assert best["metrics"]["best_eval_return"] == best["metrics"]["eval"]["mean_return"][-1]
    assert best["metrics"]["wall_time_s"] > 0


def test_a_resumed_run_does_not_replay_the_episodes_of_another_seed():
    """seed + num_envs * iteration would make seed 1 resumed at iteration k start the envs of a fresh seed 1 + k * N."""
    num_envs, seeds = 8, range(1, 11)
    fresh = {envlib.reset_seed(s, 0) + i for s in seeds for i in range(num_envs)}
    assert fresh == {s + i for s in seeds for i in range(num_envs)}  # a fresh run is seeded as before
    resumed = [envlib.reset_seed(s, k) for s in seeds for k in range(1, 500)]
    assert len(set(resumed)) == len(resumed)
    assert not fresh & {r + i for r in resumed for i in range(num_envs)}


def test_ppo_resets_its_envs_with_the_resume_seed(tmp_path, monkeypatch):
    kill_at("ppo_continuous", "after_checkpoint", 768, *ARGS, "--runs-dir", tmp_path)
    seeds, real_make = [], ppo.make_vector_env

    def make_vector_env(args):
        envs = real_make(args)
        real_reset = envs.reset
        envs.reset = lambda seed: (seeds.append(seed), real_reset(seed=seed))[1]
        return envs

    monkeypatch.setattr(ppo, "make_vector_env", make_vector_env)
    ppo.main(tyro.cli(ppo.Args, args=[*map(str, ARGS), "--runs-dir", str(tmp_path), "--resume"]))
    assert seeds == [envlib.reset_seed(1, 3)] and seeds[0] != 1 + 2 * 3
