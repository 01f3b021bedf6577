"""--reward-delay: the delayed rewards of each episode sum to its return (on the batch transform, through a PPO rollout
with autoresets on both backends, and through GRPO's group rollouts cut by the budget); a run records the delay, resume
checks it, plot.py keeps delays apart; and GRPO's --drop-equal-groups leaves out groups that teach nothing."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_plot import write_run

import grpo_continuous as grpo
import plot
import ppo_continuous
from conftest import TINY, assert_clean_error, kill_at, read_run, rollout, run_cli, run_script
from envlib import RewardDelay


def episodes_of(rewards, dones):
    """[(env, [rewards of one episode])] of a (T, N) stream, for the episodes that ended."""
    out = []
    for i in range(rewards.shape[1]):
        start = 0
        for t in np.flatnonzero(dones[:, i]):
            out.append((i, rewards[start : t + 1, i]))
            start = t + 1
    return out


@pytest.mark.parametrize("delay", [1, 3, 10, "episode"])
def test_delayed_rewards_of_each_episode_sum_to_its_return_and_are_paid_when_due(delay):
    rng = np.random.default_rng(0)
    T, N = 200, 4
    rewards, dones = rng.normal(size=(T, N)), rng.random((T, N)) < 0.04
    transform = RewardDelay(N, delay)
    paid = np.stack([transform(torch.from_numpy(r), torch.from_numpy(d)).numpy() for r, d in zip(rewards, dones)])
    for (i, true), (_, got) in zip(episodes_of(rewards, dones), episodes_of(paid, dones)):
        assert got.sum() == pytest.approx(true.sum())  # nothing lost, nothing paid twice
        every = len(true) if delay == "episode" else delay
        due = [t for t in range(len(true)) if (t + 1) % every == 0 or t == len(true) - 1]
        assert np.flatnonzero(got).tolist() == due  # paid every `delay` steps and at the end, nothing in between
        for last, t in zip([-1, *due], due):  # what was earned since the last payment
            assert got[t] == pytest.approx(true[last + 1 : t + 1].sum())
    if delay == 1:
        np.testing.assert_array_equal(paid, rewards)


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
@pytest.mark.parametrize("delay", [7, "episode"])
def test_a_ppo_rollout_pays_each_episode_its_return_across_autoresets(backend, delay):
    """Pendulum's rewards are all < 0, so every payment is visible; 30-step episodes end and autoreset 3 times."""
    if backend == "envpool":
        pytest.importorskip("envpool")
    buf, _, ended = rollout(ppo_continuous, 100, 3, "Pendulum-v1", max_episode_steps=30, backend=backend, delay=delay)
    delayed = episodes_of(buf.rewards.double().numpy(), buf.dones.numpy() > 0)
    assert len(delayed) == len(ended) == 9
    assert all(length == 30 for _, _, length in ended) and all(len(got) == 30 for _, got in delayed)
    sums, returns = sorted(got.sum() for _, got in delayed), sorted(true_return for _, true_return, _ in ended)
    np.testing.assert_allclose(sums, returns, rtol=1e-5)  # every episode paid its own return, once
    for _, got in delayed:
        assert np.count_nonzero(got) == (1 if delay == "episode" else 5)  # paid at steps 7, 14, 21, 28 and 30


def test_grpo_pays_each_member_its_return_also_when_the_budget_cuts_the_episode():
    rng = np.random.default_rng(1)
    lengths = [5, 9, 2, 9]  # the last two are cut by the budget at t = 9 (what the rollout makes of a cut)
    rewards, mask = np.zeros((9, 4), np.float32), np.zeros((9, 4), np.float32)
    for m, n in enumerate(lengths):
        rewards[:n, m], mask[:n, m] = rng.normal(size=n), 1.0
    rewards[mask == 0] = 123.0  # garbage after an end is not paid
    for delay in (1, 4, "episode"):
        paid = RewardDelay.of_episodes(torch.from_numpy(rewards), torch.from_numpy(mask), delay).numpy()
        np.testing.assert_allclose(paid.sum(0), (rewards * mask).sum(0), rtol=1e-6)
        assert np.all(paid[mask == 0] == 0)
    paid = RewardDelay.of_episodes(torch.from_numpy(rewards), torch.from_numpy(mask), "episode")
    assert paid[:, 1].nonzero()[:, 0].tolist() == [8]


def test_a_delayed_run_records_its_delay_reports_the_true_return_and_resume_checks_it(tmp_path):
    """Pendulum with 50-step episodes, so every episode pays once, at its end."""
    runs = tmp_path / "runs"
    args = [*TINY["ppo_continuous"], "--env-id", "Pendulum-v1", "--total-timesteps", 512, "--eval-every", 256]
    args += ["--eval-episodes", 1, "--no-capture-video", "--checkpoint-every", 128, "--runs-dir", runs]
    kill_at("ppo_continuous", "after_checkpoint", 256, *args, "--reward-delay", "episode")
    changed = run_script("ppo_continuous", *args, "--resume", "--reward-delay", 10)
    assert_clean_error(changed, "--reward-delay 'episode' -> 10")
    result = run_script("ppo_continuous", *args, "--resume", "--reward-delay", "episode")
    assert result.returncode == 0, result.stderr
    metrics, _ = read_run(runs / "Pendulum-v1__ppo_continuous__seed1")
    assert metrics["completed"] and metrics["args"]["reward_delay"] == "episode"
    train = metrics["train"]["episodic_return"]  # the env's own returns: a 50-step Pendulum episode costs > 10
    assert train and all(r < -10 for r in train) and all(r < -10 for r in metrics["eval"]["mean_return"])


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--reward-delay", 0], "--reward-delay must be a number of steps >= 1 (1: none) or `episode`, got 0"),
        (["--reward-delay", "soon"], "--reward-delay"),
    ],
)
def test_a_bad_delay_is_one_line_and_writes_nothing(monkeypatch, capsys, tmp_path, flags, expected):
    assert_clean_error(run_cli(monkeypatch, capsys, "ppo_continuous", *flags, "--runs-dir", tmp_path / "r"), expected)
    assert not (tmp_path / "r").exists()


def test_plot_keeps_runs_of_different_delays_apart(tmp_path):
    for delay, seed in [(1, 1), (1, 2), (1, 3), ("episode", 1), ("episode", 2), (10, 1)]:
        args = {"reward_delay": delay, "learning_rate": 3e-4}
        write_run(tmp_path / f"d{delay}", "Toy-v0", "ppo", seed, eval_returns=[1.0], args=args)
    labels = sorted({r.exp for r in plot.load_runs(tmp_path)})
    assert labels == ["ppo", "ppo (reward_delay=10)", "ppo (reward_delay=episode)"]


def test_drop_equal_groups_leaves_out_the_groups_whose_returns_are_all_equal():
    """Three groups of two: equal returns (InvertedPendulum's 1000 each), different ones, equal again."""
    rewards = torch.tensor([[1.0, 1.0, 1.0, 2.0, 0.5, 0.5], [1.0, 1.0, 1.0, 2.0, 0.5, 0.5]])
    kept = grpo.kept_groups(rewards, 2)
    assert kept.tolist() == [0, 0, 1, 1, 0, 0]
    T, M = rewards.shape
    rollout_ = grpo.GroupRollout(
        obs=torch.zeros(T, M, 3), actions=torch.zeros(T, M, 1), rewards=rewards, mask=torch.ones(T, M)
    )
    args = SimpleNamespace(group_size=2, adv_mode="episode", gamma=0.99, adv_norm="group", adv_baseline="mean", reward_delay=1)
    agent = grpo.Agent(3, 1, (8,))
    for drop, steps in ((True, 4), (False, 12)):
        batch = grpo.make_group_batch(agent, agent, rollout_, SimpleNamespace(**vars(args), drop_equal_groups=drop), "cpu")
        assert len(batch.advantages) == steps
    everything_equal = grpo.GroupRollout(rollout_.obs, rollout_.actions, torch.ones(T, M), rollout_.mask)
    empty = grpo.make_group_batch(agent, agent, everything_equal, SimpleNamespace(**vars(args), drop_equal_groups=True), "cpu")
    assert len(empty.advantages) == 0 and grpo.grpo_update(lambda mb: torch.zeros(6), empty, args) == {}  # no update
