"""Unit tests of grpo_continuous.py's math and rollout against slow, plain reference code."""

import copy
import math
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

import grpo_continuous as grpo
import runlib
from envlib import ObsNormalizer
from runlib import Timings


def advantages_reference(rewards_per_member, group_size, adv_mode, gamma, adv_norm="group", eps=1e-8, baseline="mean"):
    """Member by member, step by step: rewards_per_member is a list of 1-d arrays of any lengths."""
    T, M = max(len(r) for r in rewards_per_member), len(rewards_per_member)
    centered, scale, pooled = np.zeros((T, M)), np.ones((T, M)), []
    for g in range(M // group_size):
        members = range(g * group_size, (g + 1) * group_size)
        group = [rewards_per_member[m] for m in members]
        for t in range(max(len(r) for r in group)):  # while the group runs
            if adv_mode == "episode":
                values = [sum(r) for r in group]
            else:  # the reward-to-go from t, 0 once m has ended
                values = [sum(gamma ** (k - t) * r[k] for k in range(t, len(r))) for r in group]
            pooled += values
            for m, value in zip(members, values):
                others = [v for k, v in zip(members, values) if k != m]  # RLOO: the mean of the others
                centered[t, m] = value - (np.mean(others) if baseline == "loo" else np.mean(values))
                scale[t, m] = np.std(values) + eps
    if adv_norm != "group":
        scale[:] = 1.0 if adv_norm == "mean" else np.std(pooled) + eps
    advantages = centered / scale
    for m, r in enumerate(rewards_per_member):
        advantages[len(r) :, m] = 0.0
    return advantages


def padded(rewards_per_member):
    T, M = max(len(r) for r in rewards_per_member), len(rewards_per_member)
    rewards, mask = torch.zeros(T, M), torch.zeros(T, M)
    for m, r in enumerate(rewards_per_member):
        rewards[: len(r), m], mask[: len(r), m] = torch.as_tensor(r), 1.0
    rewards[mask == 0] = 123.0  # garbage after an end must be ignored
    return rewards, mask


@pytest.mark.parametrize("baseline", ["mean", "loo"])
@pytest.mark.parametrize("adv_norm", ["group", "mean", "batch"])
@pytest.mark.parametrize("adv_mode", ["episode", "step"])
def test_group_advantages_match_a_plain_loop_with_members_of_different_lengths(adv_mode, adv_norm, baseline):
    rng = np.random.default_rng(0)
    lengths = [7, 3, 12, 12, 1, 9, 5, 5, 5]  # three groups of three
    rewards_per_member = [rng.normal(1.0, 1.0, size=n).astype(np.float32) for n in lengths]
    rewards, mask = padded(rewards_per_member)
    got = grpo.group_advantages(rewards, mask, 3, adv_mode, 0.9, adv_norm, baseline)
    assert got.dtype == torch.float32 and got.shape == rewards.shape
    expected = advantages_reference(rewards_per_member, 3, adv_mode, 0.9, adv_norm, baseline=baseline)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert torch.all(got[mask == 0] == 0)


@pytest.mark.parametrize("adv_mode", ["episode", "step"])
def test_a_group_with_equal_returns_gets_zero_advantage_not_nan(adv_mode):
    ones = np.ones(4, np.float32)
    rewards, mask = padded([ones] * 4 + [np.arange(4, dtype=np.float32)] * 2 + [np.ones(2, np.float32)] * 2)
    got = grpo.group_advantages(rewards, mask, 4, adv_mode, 0.99)
    assert got.isfinite().all() and torch.all(got[:, :4] == 0)
    assert torch.all(got[0, 4:6] > 0) and torch.all(got[0, 6:] < 0)  # the other group is compared as usual


def test_step_mode_credits_surviving_longer_where_it_happens():
    """Two members, reward 1 per step, one falls after 2 steps: before the fall their reward-to-go differs only by what
    comes after it; after, the survivor is alone above a zero."""
    rewards, mask = padded([np.ones(2, np.float32), np.ones(5, np.float32)])
    got = grpo.group_advantages(rewards, mask, 2, "step", 1.0)
    assert got[0, 0] < 0 < got[0, 1] and torch.all(got[2:, 1] > 0.99) and torch.all(got[2:, 0] == 0)


def test_k3_kl_is_nonnegative_zero_at_equality_and_estimates_the_kl():
    torch.manual_seed(0)
    logprob = torch.randn(1000)
    assert torch.all(grpo.k3_kl(logprob, logprob) == 0)
    assert torch.all(grpo.k3_kl(logprob, logprob + torch.randn(1000) * 3) >= 0)
    assert grpo.k3_kl(torch.zeros(1), torch.full((1,), 1e4)).isfinite().all()  # the clamp: no overflow
    p, q = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(0.3, 1.2)
    x = p.sample((200_000,))
    estimate = grpo.k3_kl(p.log_prob(x), q.log_prob(x)).mean()
    torch.testing.assert_close(estimate, torch.distributions.kl_divergence(p, q), rtol=0.03, atol=1e-3)


def test_group_seeds_depend_only_on_seed_iteration_and_group():
    seeds = grpo.group_seeds(1, 5, 4)
    assert seeds == grpo.group_seeds(1, 5, 4) and len(set(seeds)) == 4
    assert not set(seeds) & set(grpo.group_seeds(1, 6, 4)) and not set(seeds) & set(grpo.group_seeds(2, 5, 4))


def grpo_batch(agent, B=256, obs_dim=5, act_dim=2):
    """A batch whose reference log-probs are far enough off, on a few rows, to hit k3's clamp."""
    torch.manual_seed(0)
    obs = torch.randn(B, obs_dim)
    actions = torch.randn(B, act_dim)
    with torch.no_grad():
        logprobs = agent.dist(obs).log_prob(actions).sum(-1) + 0.05 * torch.randn(B)
    far = torch.where(torch.arange(B) % 50 == 0, 100.0, 0.3)
    ref_logprobs = logprobs + far * torch.randn(B)
    return grpo.Batch(obs=obs, actions=actions, logprobs=logprobs, ref_logprobs=ref_logprobs, advantages=torch.randn(B))


UPDATE_ARGS = dict(update_epochs=3, minibatch_size=48, clip_coef=0.2, kl_coef=0.05, ent_coef=0.01, max_grad_norm=0.5)
UPDATE_ARGS |= dict(target_kl=None, compile=False, clip_coef_high=None)


def run_update(agent, batch, **overrides):
    args = SimpleNamespace(**{**UPDATE_ARGS, **overrides})
    optimizer = torch.optim.Adam(agent.parameters(), lr=torch.tensor(3e-3), eps=1e-5, fused=True)
    torch.manual_seed(1)
    return grpo.grpo_update(grpo.runlib.make_update_step(agent, optimizer, grpo.grpo_loss, args), batch, args), optimizer


def reference_update(agent, batch, args):
    """The GRPO update written out: the Gaussian log-density by hand, the clipped surrogate, k3 with its clamp."""
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-3, eps=1e-5)
    torch.manual_seed(1)
    for _ in range(args.update_epochs):
        perm = torch.randperm(len(batch.advantages))
        for start in range(0, len(perm), args.minibatch_size):
            idx = perm[start : start + args.minibatch_size]
            actions = batch.actions[idx]
            advantages = batch.advantages[idx]
            logstd = agent.actor_logstd.expand_as(actions)
            z = (actions - agent.actor_mean(batch.obs[idx])) / logstd.exp()
            newlogprob = (-0.5 * z**2 - logstd - 0.5 * math.log(2 * math.pi)).sum(-1)
            ratio = (newlogprob - batch.logprobs[idx]).exp()
            high = args.clip_coef if args.clip_coef_high is None else args.clip_coef_high  # DAPO's clip-higher
            clipped = ratio.clamp(1 - args.clip_coef, 1 + high)
            pg_loss = torch.max(-advantages * ratio, -advantages * clipped).mean()
            log_r = (batch.ref_logprobs[idx] - newlogprob).clamp(-20, 20)
            kl = (log_r.exp() - log_r - 1).mean()
            entropy = (0.5 + 0.5 * math.log(2 * math.pi) + agent.actor_logstd).sum()
            optimizer.zero_grad()
            (pg_loss + args.kl_coef * kl - args.ent_coef * entropy).backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()


@pytest.mark.parametrize("clip_coef_high", [None, 0.28])
def test_grpo_update_equals_a_plain_update_on_a_batch_that_does_not_split_evenly(clip_coef_high):
    torch.manual_seed(0)
    agent = grpo.Agent(5, 2, (32, 32))
    batch, reference = grpo_batch(agent), copy.deepcopy(agent)
    stats, _ = run_update(agent, batch, clip_coef_high=clip_coef_high)
    reference_update(reference, batch, SimpleNamespace(**{**UPDATE_ARGS, "clip_coef_high": clip_coef_high}))
    for p, q in zip(agent.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert list(stats) == grpo.LOSS_STATS and grpo.LOSS_STATS[0] == "losses/approx_kl"  # update's --target-kl reads it first
    assert 0.0 < stats["losses/clipfrac"] < 1.0 and stats["losses/approx_kl"] > 0 and stats["losses/kl_ref"] > 0


def test_target_kl_stops_the_epochs_early():
    agent = grpo.Agent(5, 2, (32, 32))
    _, optimizer = run_update(agent, grpo_batch(agent), update_epochs=5, target_kl=1e-9)
    assert optimizer.state[agent.actor_logstd]["step"] == math.ceil(256 / 48)  # one epoch, then the stop


def test_compiled_update_gives_the_same_parameters_as_eager():
    """One epoch of one minibatch shape: a single compilation, so this stays well under a minute."""
    agent = grpo.Agent(5, 2, (32, 32))
    batch, compiled = grpo_batch(agent), copy.deepcopy(agent)
    eager_stats, _ = run_update(agent, batch, update_epochs=1, minibatch_size=64)
    compiled_stats, _ = run_update(compiled, batch, update_epochs=1, minibatch_size=64, compile=True)
    args = SimpleNamespace(**{**UPDATE_ARGS, "compile": True})
    step = grpo.runlib.make_update_step(agent, None, grpo.grpo_loss, args)
    graphs = [c.cell_contents for c in step.__closure__ if hasattr(c.cell_contents, "_torchdynamo_orig_callable")]
    assert len(graphs) == 2  # the loss (with its backward) and the clipped Adam step
    for p, q in zip(agent.parameters(), compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    assert compiled_stats == pytest.approx(eager_stats, rel=1e-4, abs=1e-5)


def rollout(backend="gymnasium", vector_mode="sync", max_steps=10**9, G=4, num_groups=3, timings=None):
    """One iteration's groups (reset seeds 11, 22, 33, ...) of a random tiny policy on Hopper-v4, episodes of at most 40
    steps; returns the GroupRollout and the episodes reported as (steps into the rollout, return, length)."""
    args = SimpleNamespace(env_id="Hopper-v4", max_episode_steps=40, num_groups=num_groups, group_size=G)
    members, episodes = grpo.make_members(SimpleNamespace(**vars(args), env_backend=backend, vector_mode=vector_mode)), []
    obs_norm, seeds, bound = ObsNormalizer((11,), 10.0), [11 * (g + 1) for g in range(num_groups)], torch.ones(3)
    with torch.inference_mode(), torch.random.fork_rng():
        torch.manual_seed(0)
        policy, on_episode = grpo.Agent(11, 3, (16,)).sample, lambda *e: episodes.append(e)
        out = grpo.collect_group_rollouts(
            members, policy, obs_norm, seeds, G, -bound, bound, on_episode, max_steps, timings or Timings()
        )
    members.close()
    return out, [tuple(e) for e in episodes]


@pytest.mark.parametrize("backend, vector_mode", [("gymnasium", "sync"), ("gymnasium", "async"), ("envpool", "sync")])
def test_members_of_a_group_share_the_start_state_and_groups_differ(backend, vector_mode):
    if backend == "envpool":
        pytest.importorskip("envpool")
    G, num_groups, timings = 4, 3, Timings()
    out, episodes = rollout(backend, vector_mode, G=G, num_groups=num_groups, timings=timings)
    assert isinstance(out, grpo.GroupRollout) and timings.policy_forward_s > 0 and timings.env_step_s > 0
    T, M = out.mask.shape
    assert out.obs.shape == (T, M, 11) and out.actions.shape == (T, M, 3) and out.rewards.shape == (T, M)
    start = out.obs[0].reshape(num_groups, G, -1)
    for g in range(num_groups):
        assert torch.all(start[g] == start[g, 0])  # identical within a group ...
    assert len({start[g, 0].numpy().tobytes() for g in range(num_groups)}) == num_groups  # ... different across groups
    assert not torch.all(out.actions[0].reshape(num_groups, G, -1) == out.actions[0, :1])  # members act on their own

    lengths = out.mask.sum(0).long()  # each member's mask is one run of ones, its episode
    for m in range(G * num_groups):
        assert torch.all(out.mask[: lengths[m], m] == 1) and torch.all(out.mask[lengths[m] :, m] == 0)
        assert torch.all(out.rewards[lengths[m] :, m] == 0)
    assert len(out.mask) == lengths.max() and (lengths < 40).any()  # some fell before the time limit
    assert sorted(n for _, _, n in episodes) == sorted(lengths.tolist())
    assert sorted(ret for _, ret, _ in episodes) == pytest.approx(sorted(out.rewards.sum(0).tolist()), rel=1e-5)
    assert max(step for step, _, _ in episodes) == lengths.sum()  # the last end is the rollout's last env step


def test_sync_and_async_members_give_the_same_rollout():
    """Sync steps only the live members' plain envs, async all of a vector env's, the ended ones masked: the same data."""
    (sync, sync_episodes), (asyn, async_episodes) = rollout("gymnasium", "sync"), rollout("gymnasium", "async")
    assert sync_episodes == async_episodes
    for key in grpo.GroupRollout._fields:
        assert torch.equal(getattr(sync, key), getattr(asyn, key)), key


def test_the_budget_cuts_every_live_member_at_the_same_step():
    (full, full_episodes), (cut, episodes) = rollout(), rollout(max_steps=100)
    assert 100 <= cut.mask.sum() < 100 + 12 and len(cut.mask) < len(full.mask)
    for key in grpo.GroupRollout._fields:  # the same steps as far as they go ...
        assert torch.equal(getattr(cut, key), getattr(full, key)[: len(cut.mask)]), key
    assert episodes == [e for e in full_episodes if e[2] <= len(cut.mask)]  # ... and no report of a cut episode


class EndlessEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def test_envs_without_a_time_limit_need_max_episode_steps(tmp_path):
    """GRPO compares whole episodes: it asks for a time limit even when no evaluation would need one, before it writes."""
    if "EndlessTest-v0" not in gym.registry:
        gym.register("EndlessTest-v0", entry_point=EndlessEnv)
    args = grpo.Args(env_id="EndlessTest-v0", eval_every=0, capture_video=False, runs_dir=str(tmp_path / "runs"))
    with pytest.raises(runlib.UsageError, match="GRPO compares whole episodes: pass --max-episode-steps"):
        grpo.main(args)
    assert not (tmp_path / "runs").exists()
    args.max_episode_steps = 100
    runlib.check_env(args, whole_episodes=True)
