"""Unit tests of ppo_beta_continuous.py's policy: the Beta log-prob, entropy and action mapping."""

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

import ppo_beta_continuous as beta

CARRACING_LOW, CARRACING_HIGH = np.array([-1.0, 0.0, 0.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32)


def test_action_mapping_round_trips_for_asymmetric_bounds():
    x = np.random.default_rng(0).uniform(size=(100, 3)).astype(np.float32)
    action = beta.to_env_action(x, CARRACING_LOW, CARRACING_HIGH)
    assert np.all(action >= CARRACING_LOW) and np.all(action <= CARRACING_HIGH)
    np.testing.assert_allclose((action - CARRACING_LOW) / (CARRACING_HIGH - CARRACING_LOW), x, atol=1e-6)
    ends = beta.to_env_action(np.array([[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5]], np.float32), CARRACING_LOW, CARRACING_HIGH)
    np.testing.assert_allclose(ends, [[-1, 0, 0], [1, 1, 1], [0, 0.5, 0.5]])


def test_log_prob_and_entropy_match_torch_distributions():
    torch.manual_seed(0)
    alpha, b = beta.beta_params(torch.randn(64, 6) * 3)
    assert alpha.min() > 1 and b.min() > 1  # softplus + 1: unimodal
    dist = torch.distributions.Beta(alpha, b)
    x = dist.sample().clamp(beta.BETA_EPS, 1 - beta.BETA_EPS)
    torch.testing.assert_close(beta.beta_log_prob(x, alpha, b), dist.log_prob(x).sum(-1), rtol=1e-4, atol=1e-4)
    entropy = beta.beta_entropy(alpha, b)
    assert torch.isfinite(entropy).all()
    torch.testing.assert_close(entropy, dist.entropy().sum(-1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("a, b", [(1.0, 1e4), (1e4, 1.0), (1e4, 1e4), (1.0 + 1e-7, 1.0 + 1e-7)])
def test_edge_samples_give_finite_log_probs_and_gradients(a, b):
    alpha = torch.full((3, 1), a, requires_grad=True)
    b_ = torch.full((3, 1), b, requires_grad=True)
    x = torch.tensor([[0.0], [1.0], [0.5]])  # float32 sampling can round to exactly 0 or 1
    log_prob = beta.beta_log_prob(x, alpha, b_)
    assert torch.isfinite(log_prob).all()
    log_prob.sum().backward()
    assert torch.isfinite(alpha.grad).all() and torch.isfinite(b_.grad).all()
    actor = beta.NumpyActor(beta.Agent(2, 1, (4,)))
    actor.params = lambda obs: np.concatenate([np.full((1000, 1), a), np.full((1000, 1), b)], axis=1)
    samples = actor.sample(None, np.random.default_rng(0))
    assert samples.dtype == np.float32 and samples.min() > 0 and samples.max() < 1


def test_numpy_actor_matches_the_torch_actor_and_evaluates_the_mean():
    agent = beta.Agent(11, 3, (64, 32))
    obs = np.random.default_rng(3).normal(size=(7, 11)).astype(np.float32)
    with torch.no_grad():
        alpha, b = (t.numpy() for t in beta.beta_params(agent.actor_params(torch.from_numpy(obs))))
    actor = beta.NumpyActor(agent)
    np.testing.assert_allclose(actor.params(obs), np.concatenate([alpha, b], axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(actor.mean(obs), alpha / (alpha + b), rtol=1e-5)
    draws = np.stack([actor.sample(obs, np.random.default_rng(k)) for k in range(2000)])
    total = alpha + b  # samples come from Beta(alpha, beta): its mean and variance
    np.testing.assert_allclose(draws.mean(0), alpha / total, atol=0.02)
    np.testing.assert_allclose(draws.var(0), alpha * b / (total**2 * (total + 1)), rtol=0.15)


class UnboundedEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)


def test_unbounded_action_spaces_are_rejected():
    gym.register("UnboundedTest-v0", entry_point=UnboundedEnv, max_episode_steps=5)
    with pytest.raises(beta.UsageError, match="a Beta policy needs finite bounds"):
        beta.check_env(SimpleNamespace(env_id="UnboundedTest-v0"))
