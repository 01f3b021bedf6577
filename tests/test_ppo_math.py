"""Unit tests of ppo_continuous.py's math against slow, plain reference code (the rollout test also runs
ppo_beta_continuous.py's, which differs only in the policy)."""

import copy
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

import envlib
import ppo_beta_continuous as ppo_beta
import ppo_continuous as ppo
from conftest import rollout


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


def script_gae(rewards, values, last_value, terminations, truncations, final_values, gamma, lam):
    """compute_gae with next_values built as make_batch builds them."""
    dones = np.maximum(terminations, truncations)
    next_values = np.where(dones, final_values, np.concatenate([values[1:], last_value[None]])) * (1 - terminations)
    t = [torch.tensor(x, dtype=torch.float32) for x in (rewards, values, next_values, dones)]
    advantages, returns = ppo.compute_gae(*t, gamma, lam)
    return advantages.numpy(), returns.numpy()


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
    advantages, returns = script_gae(*args)
    expected = gae_reference(*args)
    np.testing.assert_allclose(advantages, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(returns, expected + values, rtol=1e-4, atol=1e-4)


def test_gae_bootstraps_a_truncation_with_the_final_observation_value_and_a_termination_with_zero():
    rewards = np.ones((1, 2), np.float32)
    values = np.zeros((1, 2), np.float32)
    final_values = np.full((1, 2), 10.0, np.float32)
    truncations = np.array([[1, 0]], np.float32)
    terminations = np.array([[0, 1]], np.float32)
    advantages, _ = script_gae(
        rewards, values, np.full(2, 99.0, np.float32), terminations, truncations, final_values, 0.5, 1.0
    )
    assert advantages.tolist() == [[1.0 + 0.5 * 10.0, 1.0]]  # never the next episode's 99


def test_running_mean_std_matches_numpy_over_chunks():
    rng = np.random.default_rng(1)
    data = rng.normal(3.0, 2.0, size=(1000, 4))
    rms = envlib.RunningMeanStd((4,))
    for chunk in np.array_split(data, 37):
        rms.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(rms.mean.numpy(), data.mean(0), rtol=1e-6)
    np.testing.assert_allclose(rms.var.numpy(), data.var(0), rtol=1e-4)


def test_obs_normalizer_is_frozen_unless_updating_and_survives_a_checkpoint(tmp_path):
    norm = envlib.ObsNormalizer((4,), clip=10.0)
    data = torch.from_numpy(np.random.default_rng(2).normal(5.0, 3.0, size=(500, 4)))
    norm(data, update=True)
    mean = norm.mean.clone()
    normalized = norm(data[:10])
    torch.testing.assert_close(norm.mean, mean, rtol=0, atol=0)  # evaluation does not move the statistics
    assert normalized.dtype == torch.float32 and abs(norm(data).mean()) < 0.05 and abs(norm(data).std() - 1) < 0.05
    assert norm(data * 100).abs().max() == 10.0  # clipped
    torch.save(norm.state_dict(), tmp_path / "n.pt")
    restored = envlib.ObsNormalizer((4,), clip=10.0)
    restored.load_state_dict(torch.load(tmp_path / "n.pt", weights_only=True))
    torch.testing.assert_close(restored(data[:10]), normalized, rtol=0, atol=0)
    unnormalized = envlib.ObsNormalizer((4,), 10.0, enabled=False)(data, update=True)
    torch.testing.assert_close(unnormalized, data.float(), rtol=0, atol=0)


def test_reward_scaler_is_cleanrls_step_by_step_scaling_and_resets_at_episode_end(tmp_path):
    rng = np.random.default_rng(0)
    T, N, gamma = 50, 3, 0.9
    rewards, dones = rng.normal(2.0, 1.0, (T, N)), rng.random((T, N)) < 0.1
    scaler, returns = envlib.RewardScaler(N, gamma, clip=100.0), np.zeros(N)
    seen = []
    for t in range(T):  # CleanRL's order: update with this step's returns, scale, then reset ended episodes
        scaled = scaler(torch.from_numpy(rewards[t]), torch.from_numpy(dones[t]))
        returns = returns * gamma + rewards[t]
        seen.append(returns.copy())  # the std of every discounted return so far, as numpy computes it
        np.testing.assert_allclose(scaled.numpy(), rewards[t] / np.sqrt(np.var(seen) + 1e-8), rtol=1e-3)
        returns[dones[t]] = 0.0
    np.testing.assert_allclose(scaler.returns.numpy(), returns)
    assert np.var(returns) > 0
    torch.save(scaler.state_dict(), tmp_path / "s.pt")
    restored = envlib.RewardScaler(N, gamma, clip=100.0)
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    # a resume restores the statistics; its envs start new episodes, so the discounted returns in flight start at 0
    assert torch.equal(restored.rms.var, scaler.rms.var) and torch.equal(restored.returns, torch.zeros(N, dtype=torch.float64))
    scaler.returns[:] = 0.0
    r0, d0 = torch.from_numpy(rewards[0]), torch.from_numpy(dones[0])
    assert torch.equal(restored(r0, d0), scaler(r0, d0))
    assert envlib.RewardScaler(N, gamma, clip=0.5)(r0 * 100, d0).abs().max() == 0.5


def test_the_rollout_sample_is_a_draw_from_the_policy_distribution():
    torch.manual_seed(0)
    agent = ppo.Agent(3, 2, (16,))
    with torch.no_grad():
        agent.actor_logstd.fill_(-0.5)
        obs = torch.randn(1, 3).expand(20000, 3)
        samples, dist = agent.sample(obs), agent.dist(obs)
    torch.testing.assert_close(samples.mean(0), dist.mean[0], atol=0.02, rtol=0)
    torch.testing.assert_close(samples.std(0), dist.stddev[0], atol=0.02, rtol=0)


def reference_update(agent, optimizer, batch, args):
    """CleanRL's update loop, with torch.distributions and index minibatches."""
    for epoch in range(args.update_epochs):
        b_inds = torch.randperm(len(batch.obs))
        for start in range(0, len(batch.obs), args.minibatch_size):
            mb = b_inds[start : start + args.minibatch_size]
            mean = agent.actor_mean(batch.obs[mb])
            dist = torch.distributions.Normal(mean, agent.actor_logstd.expand_as(mean).exp())
            newlogprob, entropy = dist.log_prob(batch.actions[mb]).sum(1), dist.entropy().sum(1)
            newvalue = agent.critic(batch.obs[mb]).view(-1)
            logratio = newlogprob - batch.logprobs[mb]
            ratio = logratio.exp()
            adv = batch.advantages[mb]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            pg_loss = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)).mean()
            v_unclipped = (newvalue - batch.returns[mb]) ** 2
            v_clipped = batch.values[mb] + torch.clamp(newvalue - batch.values[mb], -args.clip_coef, args.clip_coef)
            v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - batch.returns[mb]) ** 2).mean()
            loss = pg_loss - args.ent_coef * entropy.mean() + v_loss * args.vf_coef
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
    return pg_loss, v_loss


def ppo_batch(agent, B=256, obs_dim=5, act_dim=2):
    torch.manual_seed(0)
    obs, actions = torch.randn(B, obs_dim), torch.randn(B, act_dim)
    with torch.no_grad():
        logprobs = agent.dist(obs).log_prob(actions).sum(-1) + 0.05 * torch.randn(B)
    return ppo.Batch(
        obs=obs, actions=actions, logprobs=logprobs, advantages=torch.randn(B), returns=torch.randn(B), values=torch.randn(B)
    )


UPDATE_ARGS = dict(
    update_epochs=3,
    minibatch_size=32,
    norm_adv=True,
    clip_coef=0.2,
    clip_vloss=True,
    ent_coef=0.01,
    vf_coef=0.5,
    max_grad_norm=0.5,
    target_kl=None,
    compile=False,
)


def run_update(agent, batch, **overrides):
    args = SimpleNamespace(**{**UPDATE_ARGS, **overrides})
    optimizer = torch.optim.Adam(agent.parameters(), lr=torch.tensor(3e-3), eps=1e-5, fused=True)
    torch.manual_seed(1)
    step = ppo.runlib.make_update_step(agent, optimizer, ppo.ppo_loss, args)
    return ppo.ppo_update(step, batch, args.minibatch_size, args), optimizer


def test_ppo_update_equals_the_plain_cleanrl_update():
    torch.manual_seed(0)
    agent = ppo.Agent(5, 2, (32, 32))
    batch, reference = ppo_batch(agent), copy.deepcopy(agent)
    stats, _ = run_update(agent, batch)
    args = SimpleNamespace(**UPDATE_ARGS)
    torch.manual_seed(1)
    ref_pg, ref_v = reference_update(reference, torch.optim.Adam(reference.parameters(), lr=3e-3, eps=1e-5), batch, args)
    for p, q in zip(agent.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert set(stats) == set(ppo.LOSS_STATS) and 0.0 < stats["losses/clipfrac"] < 1.0  # the policy moved enough to clip
    assert stats["losses/approx_kl"] > 0 and stats["losses/entropy"] == pytest.approx(
        2 * (0.5 + 0.5 * np.log(2 * np.pi)), 0.05
    )


def test_target_kl_stops_the_epochs_early():
    agent = ppo.Agent(5, 2, (32, 32))
    _, optimizer = run_update(agent, ppo_batch(agent), update_epochs=5, target_kl=1e-9)
    assert optimizer.state[agent.actor_logstd]["step"] == 256 // 32  # one epoch, then the stop


def test_compiled_update_gives_the_same_parameters_as_eager():
    agent = ppo.Agent(5, 2, (32, 32))
    batch, compiled = ppo_batch(agent), copy.deepcopy(agent)
    eager_stats, _ = run_update(agent, batch, update_epochs=1)
    compiled_stats, _ = run_update(compiled, batch, update_epochs=1, compile=True)
    args = SimpleNamespace(**{**UPDATE_ARGS, "compile": True})
    step = ppo.runlib.make_update_step(agent, None, ppo.ppo_loss, args)
    graphs = [c.cell_contents for c in step.__closure__ if hasattr(c.cell_contents, "_torchdynamo_orig_callable")]
    assert len(graphs) == 2  # the loss (with its backward) and the clipped Adam step
    for p, q in zip(agent.parameters(), compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    assert compiled_stats == pytest.approx(eager_stats, rel=1e-4, abs=1e-5)


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
    buf, next_obs, ended = rollout(module, T, N, "CounterTest-v0")
    obs, final = torch.cat([buf.obs, torch.from_numpy(next_obs)[None]]), buf.final_obs
    for i in range(N):
        for t in range(T):
            (steps, episode), terminated = obs[t, i], buf.terminations[t, i]
            assert bool(terminated) == (episode % 2 == 1 and steps + 1 == 3)
            assert bool(buf.dones[t, i]) == (terminated or (episode % 2 == 0 and steps + 1 == 5))
            if buf.dones[t, i]:  # the next stored obs starts a new episode; the final obs is kept aside
                assert obs[t + 1, i].tolist() == [0, episode + 1]
                assert final[(t, i)].tolist() == [steps + 1, episode]
            else:
                assert obs[t + 1, i].tolist() == [steps + 1, episode] and (t, i) not in final
    assert sorted(length for _, _, length in ended) == sorted(int(o[0]) for o in final.values())
    assert all(ret == length for _, ret, length in ended)  # reward 1 per step, nothing from the next episode
    assert [t for t, _, _ in ended] == sorted(t for t, _ in final)  # reported at the step it ended
    assert bool((buf.rewards == 1.0).all())


def test_make_batch_bootstraps_each_env_from_its_own_next_state():
    """3 envs whose episodes end at different steps, by truncation and by termination: each step's advantage uses the
    value of its own env's next state: the next step's, V(final obs) after a truncation, 0 after a termination, the
    rollout's last observation at the end; never another env's, never the next episode's first observation."""
    agent = ppo.Agent(2, 1, (8,))
    agent.critic = torch.nn.Linear(2, 1)
    with torch.no_grad():
        agent.critic.weight.copy_(torch.tensor([[1.0, 10.0]]))  # V(obs) = obs[0] + 10 obs[1]: obs[1] is the env's index
        agent.critic.bias.zero_()
    T, N = 3, 3
    buf = ppo.Rollout.empty(T, N, obs_dim=2, act_dim=1)
    buf.obs[:, :, 0] = torch.tensor([[1.0, 2, 3], [4, 5, 6], [0, 0, 0]])  # after step 1, env 0 and 2 start new episodes
    buf.obs[:, :, 1] = torch.tensor([0.0, 1, 2])
    buf.rewards[:] = 1.0
    buf.dones[1, 0] = buf.dones[1, 2] = buf.dones[0, 1] = 1.0
    buf.terminations[1, 2] = 1.0  # env 2 terminates after step 1; env 0 truncates after step 1, env 1 after step 0
    buf.final_obs[0, 1] = torch.tensor([20.0, 1.0])
    buf.final_obs[1, 0] = torch.tensor([7.0, 0.0])
    buf.final_obs[1, 2] = torch.tensor([9.0, 2.0])
    buf.obs[1, 1, 0] = 0.0  # env 1's new episode
    last = torch.tensor([[8.0, 0.0], [5.0, 1.0], [3.0, 2.0]])
    batch = ppo.make_batch(agent, buf, last, SimpleNamespace(gamma=0.5, gae_lambda=0.0), torch.device("cpu"))
    V = (buf.obs[..., 0] + 10 * buf.obs[..., 1]).numpy()
    next_V = np.array(
        [
            [V[1, 0], 20 + 10, V[1, 2]],  # env 1 truncated: its final observation
            [7 + 0, V[2, 1], 0.0],  # env 0 truncated: final obs; env 2 terminated: 0
            [8 + 0, 5 + 10, 3 + 20],  # the observations after the rollout
        ]
    )
    np.testing.assert_allclose(batch.advantages.view(T, N).numpy(), 1 + 0.5 * next_V - V, rtol=1e-6)
    np.testing.assert_allclose(batch.values.view(T, N).numpy(), V, rtol=1e-6)
    torch.testing.assert_close(batch.returns, batch.advantages + batch.values)
    with torch.no_grad():
        expected = agent.dist(buf.obs.view(T * N, 2)).log_prob(torch.zeros(T * N, 1))[:, 0]
    torch.testing.assert_close(batch.logprobs, expected)
