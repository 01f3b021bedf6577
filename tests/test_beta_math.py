"""Unit tests of ppo_beta_continuous.py's policy: the Beta distribution, its samples at the edges, the action mapping."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import ppo_beta_continuous as beta
from conftest import assert_clean_error, run_cli

CARRACING_LOW, CARRACING_HIGH = np.array([-1.0, 0.0, 0.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32)


def test_action_mapping_round_trips_for_asymmetric_bounds():
    x = np.random.default_rng(0).uniform(size=(100, 3)).astype(np.float32)
    action = beta.env_action(x, CARRACING_LOW, CARRACING_HIGH)
    assert np.all(action >= CARRACING_LOW) and np.all(action <= CARRACING_HIGH)
    np.testing.assert_allclose((action - CARRACING_LOW) / (CARRACING_HIGH - CARRACING_LOW), x, atol=1e-6)
    ends = beta.env_action(np.array([[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5]], np.float32), CARRACING_LOW, CARRACING_HIGH)
    np.testing.assert_allclose(ends, [[-1, 0, 0], [1, 1, 1], [0, 0.5, 0.5]])


def test_the_policy_is_a_unimodal_beta_whose_samples_follow_it():
    torch.manual_seed(0)
    dist = beta.beta_dist(torch.randn(64, 6) * 3)
    assert dist.concentration1.min() > 1 and dist.concentration0.min() > 1  # softplus + 1: unimodal
    agent = beta.Agent(5, 2, (16,))
    obs = torch.randn(1, 5).expand(20000, 5)
    with torch.no_grad():
        samples, dist = agent.sample(obs), agent.dist(obs)
    assert samples.min() >= beta.BETA_EPS and samples.max() <= 1 - beta.BETA_EPS
    torch.testing.assert_close(samples.mean(0), dist.mean[0], atol=0.01, rtol=0)
    torch.testing.assert_close(samples.var(0), dist.variance[0], atol=0.005, rtol=0)


@pytest.mark.parametrize("a, b", [(1.0, 1e4), (1e4, 1.0), (1e4, 1e4), (1.0 + 1e-7, 1.0 + 1e-7)])
def test_edge_samples_give_finite_log_probs_and_gradients(a, b):
    """Extreme parameters put float32 samples on 0 or 1; the agent keeps them BETA_EPS inside, where log-probs and
    their gradients stay finite."""
    y = torch.tensor([[a, b]]).expand(1000, 2) - 1.0
    out = (y + torch.log(-torch.expm1(-y)).clamp_min(-60.0)).requires_grad_()  # the actor output that gives (a, b)
    dist = beta.beta_dist(out)
    x = dist.sample().clamp(beta.BETA_EPS, 1 - beta.BETA_EPS)
    log_prob = dist.log_prob(x)
    assert torch.isfinite(log_prob).all()
    log_prob.sum().backward()
    assert torch.isfinite(out.grad).all()


def test_evaluation_acts_with_the_mean_of_the_beta(tmp_path, monkeypatch):
    """The policy that evaluation runs (main's, on a saved run) is the Beta's mean alpha / (alpha + beta), computed here
    from the actor's outputs, on the frozen observation statistics, mapped onto InvertedPendulum's bounds [-3, 3]."""
    args = dict(env_id="InvertedPendulum-v4", total_timesteps=64, num_steps=64, num_minibatches=2, update_epochs=1)
    beta.main(beta.Args(**args, eval_every=0, capture_video=False, runs_dir=str(tmp_path)))
    path = tmp_path / "InvertedPendulum-v4__ppo_beta_continuous__seed1" / "checkpoints" / "latest.pt"
    policies = []
    monkeypatch.setattr(beta.Run, "evaluate", lambda run, make_eval_env, act: policies.append(act))
    beta.main(beta.Args(**args, eval_checkpoint=str(path)))
    ckpt, obs = torch.load(path, weights_only=True), np.random.default_rng(0).normal(size=(5, 4))
    agent = beta.Agent(4, 1, (64, 64))
    agent.load_state_dict(ckpt["agent"])
    mean, var = ckpt["obs_norm"]["mean"].numpy(), ckpt["obs_norm"]["var"].numpy()
    normalized = np.clip((obs - mean) / np.sqrt(var + 1e-8), -10, 10).astype(np.float32)
    with torch.no_grad():
        alpha, b = 1 + torch.nn.functional.softplus(agent.actor(torch.from_numpy(normalized))).numpy().T
    np.testing.assert_allclose(policies[0](obs)[:, 0], -3 + 6 * alpha / (alpha + b), rtol=1e-5, atol=1e-6)


class UnboundedEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)


def test_unbounded_action_spaces_are_rejected(monkeypatch, capsys, tmp_path):
    if "UnboundedTest-v0" not in gym.registry:
        gym.register("UnboundedTest-v0", entry_point=UnboundedEnv, max_episode_steps=5)
    result = run_cli(monkeypatch, capsys, "ppo_beta_continuous", "--env-id", "UnboundedTest-v0", "--runs-dir", tmp_path / "r")
    assert_clean_error(result, "a Beta policy needs finite bounds: use ppo_continuous.py")
    assert not (tmp_path / "r").exists()
