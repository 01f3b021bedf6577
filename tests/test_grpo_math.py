"""Unit tests of grpo_continuous.py's math against slow, plain reference code."""

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

import grpo_continuous as grpo
from conftest import assert_fast_update_matches_torch


def advantages_reference(rewards_per_member, group_size, adv_mode, gamma, eps=1e-8):
    """Member by member, step by step: rewards_per_member is a list of 1-d arrays of any lengths."""
    T, M = max(len(r) for r in rewards_per_member), len(rewards_per_member)
    advantages = np.zeros((T, M))
    for g in range(M // group_size):
        members = range(g * group_size, (g + 1) * group_size)
        if adv_mode == "episode":
            returns = [sum(rewards_per_member[m]) for m in members]
            mean, std = np.mean(returns), np.std(returns)
            for m, ret in zip(members, returns):
                advantages[:len(rewards_per_member[m]), m] = (ret - mean) / (std + eps)
            continue
        for t in range(T):
            to_go = []
            for m in members:
                r = rewards_per_member[m]
                to_go.append(sum(gamma ** (k - t) * r[k] for k in range(t, len(r))))  # 0 once m has ended
            mean, std = np.mean(to_go), np.std(to_go)
            for m, value in zip(members, to_go):
                if t < len(rewards_per_member[m]):
                    advantages[t, m] = (value - mean) / (std + eps)
    return advantages


def padded(rewards_per_member):
    T = max(len(r) for r in rewards_per_member)
    rewards, mask = np.zeros((T, len(rewards_per_member)), np.float32), np.zeros((T, len(rewards_per_member)), np.float32)
    for m, r in enumerate(rewards_per_member):
        rewards[:len(r), m], mask[:len(r), m] = r, 1.0
    rewards[mask == 0] = 123.0  # garbage after an end must be ignored
    return rewards, mask


@pytest.mark.parametrize("adv_mode", ["episode", "step"])
def test_group_advantages_match_a_plain_loop_with_members_of_different_lengths(adv_mode):
    rng = np.random.default_rng(0)
    lengths = [7, 3, 12, 12, 1, 9, 5, 5, 5]  # three groups of three
    rewards_per_member = [rng.normal(1.0, 1.0, size=n).astype(np.float32) for n in lengths]
    rewards, mask = padded(rewards_per_member)
    got = grpo.group_advantages(rewards, mask, 3, adv_mode, 0.9)
    np.testing.assert_allclose(got, advantages_reference(rewards_per_member, 3, adv_mode, 0.9), rtol=1e-4, atol=1e-4)
    assert np.all(got[mask == 0] == 0)


@pytest.mark.parametrize("adv_mode", ["episode", "step"])
def test_a_group_with_equal_returns_gets_zero_advantage_not_nan(adv_mode):
    rewards, mask = padded([np.ones(4, np.float32)] * 4 + [np.arange(4, dtype=np.float32)] * 2 + [np.ones(2, np.float32)] * 2)
    got = grpo.group_advantages(rewards, mask, 4, adv_mode, 0.99)
    assert np.isfinite(got).all() and np.all(got[:, :4] == 0)
    assert np.all(got[0, 4:6] > 0) and np.all(got[0, 6:] < 0)  # the other group is compared as usual


def test_step_mode_credits_surviving_longer_where_it_happens():
    """Two members, reward 1 per step, one falls after 2 steps: before the fall their reward-to-go
    differs only by what comes after it; after, the survivor is alone above a zero."""
    rewards, mask = padded([np.ones(2, np.float32), np.ones(5, np.float32)])
    got = grpo.group_advantages(rewards, mask, 2, "step", 1.0)
    assert got[0, 0] < 0 < got[0, 1] and np.all(got[2:, 1] > 0.99) and np.all(got[2:, 0] == 0)


def test_k3_kl_is_nonnegative_zero_at_equality_and_estimates_the_kl():
    torch.manual_seed(0)
    logprob = torch.randn(1000)
    assert torch.all(grpo.k3_kl(logprob, logprob) == 0)
    assert torch.all(grpo.k3_kl(logprob, logprob + torch.randn(1000) * 3) >= 0)
    p, q = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(0.3, 1.2)
    x = p.sample((200_000,))
    estimate = grpo.k3_kl(p.log_prob(x), q.log_prob(x)).mean()
    torch.testing.assert_close(estimate, torch.distributions.kl_divergence(p, q), rtol=0.03, atol=1e-3)


def test_group_seeds_depend_only_on_seed_iteration_and_group():
    seeds = grpo.group_seeds(1, 5, 4)
    assert seeds == grpo.group_seeds(1, 5, 4) and len(set(seeds)) == 4
    assert not set(seeds) & set(grpo.group_seeds(1, 6, 4)) and not set(seeds) & set(grpo.group_seeds(2, 5, 4))


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_members_of_a_group_share_the_start_state_and_groups_differ(backend):
    if backend == "envpool":
        pytest.importorskip("envpool")
    G, num_groups = 4, 3
    members = grpo.make_members(SimpleNamespace(env_backend=backend, env_id="Hopper-v4", max_episode_steps=40, num_groups=num_groups,
                                                group_size=G))
    agent = grpo.Agent(11, 3, (16,), norm_obs=False)
    episodes = []
    rollout, _, _ = grpo.collect_group_rollouts(members, agent, grpo.NumpyActor(agent), np.random.default_rng(0), [11, 22, 33], G,
                                                -np.ones(3, np.float32), np.ones(3, np.float32), 1000, lambda *e: episodes.append(e))
    start = rollout.obs[0].reshape(num_groups, G, -1)
    for g in range(num_groups):
        assert np.all(start[g] == start[g, 0])  # identical within a group ...
    assert len({start[g, 0].tobytes() for g in range(num_groups)}) == num_groups  # ... different across groups
    assert not np.all(rollout.actions[0].reshape(num_groups, G, -1) == rollout.actions[0, :1])  # members act on their own

    lengths = rollout.mask.sum(0).astype(int)  # each member's mask is one run of ones, its episode
    for m in range(G * num_groups):
        assert np.all(rollout.mask[:lengths[m], m] == 1) and np.all(rollout.mask[lengths[m]:, m] == 0)
        assert np.all(rollout.rewards[lengths[m]:, m] == 0)
    assert sorted(n for _, _, n in episodes) == sorted(lengths) and rollout.num_steps == lengths.sum()
    assert sorted(ret for _, ret, _ in episodes) == pytest.approx(sorted(rollout.returns))
    assert max(step for step, _, _ in episodes) == 1000 + rollout.num_steps


class EndlessEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def test_envs_without_a_time_limit_need_max_episode_steps():
    gym.register("EndlessTest-v0", entry_point=EndlessEnv)
    with pytest.raises(grpo.UsageError, match="pass --max-episode-steps"):
        grpo.check_env(SimpleNamespace(env_id="EndlessTest-v0", max_episode_steps=None, env_backend="gymnasium"))
    grpo.check_env(SimpleNamespace(env_id="EndlessTest-v0", max_episode_steps=100, env_backend="gymnasium"))


@pytest.mark.parametrize("variant", [{}, {"kl_coef": 0.5, "ent_coef": 0.05}, {"target_kl": 0.002}])
def test_the_numpy_fast_update_equals_the_torch_reference_update(variant):
    """The CPU fast path (hand-written gradients) against autograd, on a batch that does not split
    into whole minibatches and with reference log-probs far enough off to hit k3's clamp."""
    torch.manual_seed(0)
    B, obs_dim, act_dim = 300, 5, 2
    agent = grpo.Agent(obs_dim, act_dim, (32, 16))
    batch = {"obs": torch.randn(B, obs_dim), "actions": torch.randn(B, act_dim), "advantages": torch.randn(B)}
    with torch.no_grad():
        batch["logprobs"] = agent.log_prob(batch["obs"], batch["actions"]) + 0.05 * torch.randn(B)
        batch["ref_logprobs"] = batch["logprobs"] + torch.randn(B) * torch.where(torch.arange(B) % 50 == 0, 100.0, 0.3)
    args = SimpleNamespace(**{**dict(update_epochs=3, minibatch_size=64, clip_coef=0.2, kl_coef=0.01, ent_coef=0.0,
                                     max_grad_norm=0.5, target_kl=None), **variant})
    assert_fast_update_matches_torch(grpo, "grpo_update", agent, batch, args)
