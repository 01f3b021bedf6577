"""Unit tests of ppo_continuous.py's math against slow, plain reference code (the rollout test also
runs ppo_beta_continuous.py's, which differs only in the policy)."""

import copy
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

import ppo_beta_continuous as ppo_beta
import ppo_continuous as ppo
from conftest import assert_fast_update_matches_torch


def gae_reference(rewards, values, last_value, terminations, truncations, final_values, gamma, lam):
    """One env, one step at a time, the textbook way."""
    T, N = rewards.shape
    advantages = np.zeros((T, N))
    for i in range(N):
        running = 0.0
        for t in reversed(range(T)):
            if terminations[t, i]:  # death: no future value
                next_value, carry = 0.0, 0.0
            elif truncations[t, i]:  # time limit: the episode would have gone on
                next_value, carry = final_values[t, i], 0.0
            else:
                next_value, carry = (values[t + 1, i] if t + 1 < T else last_value[i]), running
            delta = rewards[t, i] + gamma * next_value - values[t, i]
            running = delta + gamma * lam * carry
            advantages[t, i] = running
    return advantages


def test_gae_matches_plain_loop_with_truncation_and_termination_inside_the_rollout():
    rng = np.random.default_rng(0)
    T, N = 64, 3
    rewards, values, last_value = rng.normal(size=(T, N)), rng.normal(size=(T, N)), rng.normal(size=N)
    terminations = np.zeros((T, N))
    truncations = np.zeros((T, N))
    terminations[[5, 30], 0] = 1
    truncations[[12, 63], 1] = 1
    terminations[20, 2], truncations[40, 2], terminations[41, 2] = 1, 1, 1
    truncations[50, 2] = terminations[50, 2] = 1  # both at once: termination wins
    final_values = np.where(terminations + truncations > 0, rng.normal(size=(T, N)), 0.0)
    args = (rewards, values, last_value, terminations, truncations, final_values, 0.99, 0.95)
    advantages, returns = ppo.compute_gae(*[a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in args])
    expected = gae_reference(*args)
    np.testing.assert_allclose(advantages, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(returns, expected + values, rtol=1e-4, atol=1e-4)


def test_gae_bootstraps_a_truncation_with_the_final_observation_value_and_a_termination_with_zero():
    rewards = np.ones((1, 2), np.float32)
    values = np.zeros((1, 2), np.float32)
    final_values = np.full((1, 2), 10.0, np.float32)
    truncations = np.array([[1, 0]], np.float32)
    terminations = np.array([[0, 1]], np.float32)
    advantages, _ = ppo.compute_gae(rewards, values, np.full(2, 99.0, np.float32), terminations, truncations, final_values, 0.5, 1.0)
    assert advantages.tolist() == [[1.0 + 0.5 * 10.0, 1.0]]  # never the next episode's 99


def test_running_mean_std_matches_numpy_over_chunks():
    rng = np.random.default_rng(1)
    data = rng.normal(3.0, 2.0, size=(1000, 4))
    rms = ppo.RunningMeanStd((4,))
    for chunk in np.array_split(data, 37):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-6)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-4)


def test_obs_normalizer_is_frozen_unless_updating_and_travels_in_the_agent_state_dict():
    agent = ppo.Agent(4, 2, (8, 8))
    data = np.random.default_rng(2).normal(5.0, 3.0, size=(500, 4))
    agent.obs_rms(data, update=True)
    mean = agent.obs_rms.mean.copy()
    normalized = agent.obs_rms(data[:10])
    np.testing.assert_array_equal(agent.obs_rms.mean, mean)  # evaluation does not move the statistics
    assert abs(agent.obs_rms(data).mean()) < 0.05 and abs(agent.obs_rms(data).std() - 1) < 0.05
    restored = ppo.Agent(4, 2, (8, 8))
    restored.load_state_dict(agent.state_dict())
    np.testing.assert_allclose(restored.obs_rms(data[:10]), normalized)


def test_reward_scaler_scales_a_rollout_as_step_by_step_updates_would_and_resets_at_episode_end():
    rng = np.random.default_rng(0)
    T, N, gamma = 50, 3, 0.9
    rewards, dones = rng.normal(2.0, 1.0, (2, T, N)), rng.random((2, T, N)) < 0.1
    scaler, ref_rms, returns = ppo.RewardScaler(N, gamma, clip=100.0), ppo.RunningMeanStd(), np.zeros(N)
    for k in range(2):  # two rollouts: the statistics and the running returns carry over
        scaled = scaler.scale(rewards[k], dones[k])
        for t in range(T):  # CleanRL's order: update with this step's returns, scale, then reset ended episodes
            returns = returns * gamma + rewards[k, t]
            ref_rms.update(returns)
            np.testing.assert_allclose(scaled[t], rewards[k, t] / np.sqrt(ref_rms.var + 1e-8), rtol=1e-5)
            returns[dones[k, t]] = 0.0
        np.testing.assert_allclose(scaler.returns, returns)
        np.testing.assert_allclose([scaler.rms.mean, scaler.rms.var, scaler.rms.count], [ref_rms.mean, ref_rms.var, ref_rms.count], rtol=1e-9)
    assert np.abs(ppo.RewardScaler(N, gamma, clip=0.5).scale(rewards[0], dones[0])).max() == np.float32(0.5)


def test_gaussian_log_prob_and_entropy_match_torch_distributions():
    torch.manual_seed(0)
    mean, logstd = torch.randn(16, 3), torch.randn(1, 3)
    actions = torch.randn(16, 3) * 2
    dist = torch.distributions.Normal(mean, logstd.exp())
    torch.testing.assert_close(ppo.gaussian_log_prob(actions, mean, logstd), dist.log_prob(actions).sum(-1))
    torch.testing.assert_close(ppo.gaussian_entropy(logstd).expand(16), dist.entropy().sum(-1))


def test_numpy_actor_matches_the_torch_actor():
    agent = ppo.Agent(11, 3, (64, 32))
    obs = np.random.default_rng(3).normal(size=(7, 11)).astype(np.float32)
    with torch.no_grad():
        expected = agent.actor_mean(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(ppo.NumpyActor(agent).mean(obs), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ppo.NumpyActor(agent).std, agent.actor_logstd.exp().detach().numpy()[0])


def reference_update(agent, optimizer, batch, args):
    """CleanRL's update loop, with torch.distributions and index minibatches."""
    b_inds = None
    for epoch in range(args.update_epochs):
        b_inds = torch.randperm(args.batch_size)
        for start in range(0, args.batch_size, args.minibatch_size):
            mb = b_inds[start:start + args.minibatch_size]
            mean = agent.actor_mean(batch["obs"][mb])
            dist = torch.distributions.Normal(mean, agent.actor_logstd.expand_as(mean).exp())
            newlogprob, entropy = dist.log_prob(batch["actions"][mb]).sum(1), dist.entropy().sum(1)
            newvalue = agent.critic(batch["obs"][mb]).view(-1)
            logratio = newlogprob - batch["logprobs"][mb]
            ratio = logratio.exp()
            adv = batch["advantages"][mb]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            pg_loss = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)).mean()
            v_unclipped = (newvalue - batch["returns"][mb]) ** 2
            v_clipped = batch["values"][mb] + torch.clamp(newvalue - batch["values"][mb], -args.clip_coef, args.clip_coef)
            v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - batch["returns"][mb]) ** 2).mean()
            loss = pg_loss - args.ent_coef * entropy.mean() + v_loss * args.vf_coef
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
    return pg_loss, v_loss


def test_ppo_update_equals_the_plain_cleanrl_update():
    torch.manual_seed(0)
    B, obs_dim, act_dim = 256, 5, 2
    agent = ppo.Agent(obs_dim, act_dim, (32, 32))
    batch = {"obs": torch.randn(B, obs_dim), "actions": torch.randn(B, act_dim), "advantages": torch.randn(B),
             "returns": torch.randn(B), "values": torch.randn(B)}
    with torch.no_grad():
        batch["logprobs"] = ppo.gaussian_log_prob(batch["actions"], agent.actor_mean(batch["obs"]), agent.actor_logstd) + 0.05 * torch.randn(B)
    args = SimpleNamespace(update_epochs=3, batch_size=B, minibatch_size=32, norm_adv=True, clip_coef=0.2, clip_vloss=True,
                           ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, target_kl=None)
    reference = copy.deepcopy(agent)
    opt, ref_opt = (torch.optim.Adam(a.parameters(), lr=3e-3, eps=1e-5) for a in (agent, reference))
    torch.manual_seed(1)
    stats = ppo.ppo_update(agent, opt, batch, args)
    torch.manual_seed(1)
    ref_pg, ref_v = reference_update(reference, ref_opt, batch, args)
    for p, q in zip(agent.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats["losses/policy_loss"], ref_pg.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats["losses/value_loss"], ref_v.detach(), rtol=1e-4, atol=1e-5)
    assert 0.0 < float(stats["losses/clipfrac"]) < 1.0  # the update moved the policy enough to clip some


@pytest.mark.parametrize("module", [ppo, ppo_beta])
@pytest.mark.parametrize("variant", [{}, {"clip_vloss": False, "norm_adv": False}, {"ent_coef": 0.05}, {"target_kl": 0.002}])
def test_the_numpy_fast_update_equals_the_torch_reference_update(module, variant):
    """The CPU fast path (hand-written gradients) against autograd."""
    torch.manual_seed(0)
    B, obs_dim, act_dim = 256, 5, 2
    agent = module.Agent(obs_dim, act_dim, (32, 16))
    batch = {"obs": torch.randn(B, obs_dim), "actions": torch.rand(B, act_dim), "advantages": torch.randn(B),
             "returns": torch.randn(B), "values": torch.randn(B)}
    learner = module.NumpyLearner(agent, torch.optim.Adam(agent.parameters()))
    learner.pull()
    features = learner.action_features(batch["actions"].numpy())
    batch["logprobs"] = torch.from_numpy(learner.log_prob(batch["obs"].numpy(), features)[0]) + 0.05 * torch.randn(B)
    args = SimpleNamespace(**{**dict(update_epochs=3, batch_size=B, minibatch_size=32, norm_adv=True, clip_coef=0.2, clip_vloss=True,
                                     ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, target_kl=None), **variant})
    opt = assert_fast_update_matches_torch(module, "ppo_update", agent, batch, args)
    if variant.get("target_kl"):
        assert opt.state[next(agent.parameters())]["step"] < 3 * 3 * B // 32  # the early stop did stop early


class CounterEnv(gym.Env):
    """obs = (steps into the episode, episode index); odd episodes terminate after 3 steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self):
        self.episode, self.t = -1, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return np.array([self.t, self.episode], np.float64), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t, self.episode], np.float64), 1.0, self.episode % 2 == 1 and self.t == 3, False, {}


@pytest.mark.parametrize("module", [ppo, ppo_beta])
def test_rollout_never_crosses_an_episode_boundary(module):
    T, N = 23, 2
    if "CounterTest-v0" not in gym.registry:
        gym.register("CounterTest-v0", entry_point=CounterEnv, max_episode_steps=5)
    envs = module.make_vector_env(SimpleNamespace(env_id="CounterTest-v0", max_episode_steps=None, num_envs=N, vector_mode="sync", env_backend="gymnasium"))
    next_obs, _ = envs.reset(seed=0)
    agent = module.Agent(2, 1, (8,), norm_obs=False)
    rollout = module.Rollout(T, N, 2, 1)
    episodes = []
    scaler = module.RewardScaler(N, 0.99, 10.0, enabled=False)
    next_obs, _, _ = module.collect_rollout(envs, next_obs, agent, module.NumpyActor(agent), np.random.default_rng(0), scaler, rollout,
                                         np.array([-1.0], np.float32), np.array([1.0], np.float32), 0, lambda *e: episodes.append(e))
    final = dict(zip(rollout.final_obs_at, rollout.final_obs))
    obs = np.concatenate([rollout.obs, next_obs[None].astype(np.float32)])
    for i in range(N):
        for t in range(T):
            (steps, episode), done = obs[t, i], rollout.terminations[t, i] or rollout.truncations[t, i]
            assert bool(rollout.terminations[t, i]) == (episode % 2 == 1 and steps + 1 == 3)
            assert bool(rollout.truncations[t, i]) == (episode % 2 == 0 and steps + 1 == 5)
            if done:  # the next stored obs starts a new episode; the final obs is kept aside
                assert obs[t + 1, i].tolist() == [0, episode + 1]
                assert final[(t, i)].tolist() == [steps + 1, episode]
            else:
                assert obs[t + 1, i].tolist() == [steps + 1, episode] and (t, i) not in final
    assert sorted(length for _, _, length in episodes) == sorted(int(o[0]) for o in final.values())
    assert all(ret == length for _, ret, length in episodes)  # reward 1 per step, nothing from the next episode
