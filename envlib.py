"""The envs' plumbing, written once for every training script (as PureJaxRL's wrappers.py): gymnasium vector envs with
SAME_STEP autoreset, the EnvPool adapter, GRPO's group members, the episodes in flight, the reset seed of a resumed run,
and the batch transforms of observations and rewards (running normalization, reward scaling, delayed rewards).
Their math is in torch, written once: the observation normalization (normalize_obs) is the rollout's, the
evaluation's and --export's. The run itself (directory, checkpoints, evaluation, the CLI) is runlib.py's.
"""

import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

Array = np.ndarray[Any, Any]
StateDict = dict[str, Any]


def vector_env(
    env_fn: Callable[[], gym.Env[Any, Any]], num_envs: int, mode: str
) -> gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv:
    """`num_envs` copies of env_fn() as gymnasium's sync or async vector env, with SAME_STEP autoreset: gymnasium's
    default NEXT_STEP would add a reset step whose action is ignored."""
    vector_cls = gym.vector.SyncVectorEnv if mode == "sync" else gym.vector.AsyncVectorEnv
    return vector_cls([env_fn] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, copy=False)


class VectorEnv(Protocol):
    """What the rollouts use of a vector env: gymnasium's, or an EnvPool adapter below."""

    def reset(self, *, seed: int) -> tuple[Any, dict[str, Any]]: ...

    def step(self, actions: Array) -> tuple[Any, Any, Any, Any, dict[str, Any]]: ...

    def close(self) -> None: ...


class Episodes:
    """The return and length of each env's episode in flight."""

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, np.int64)

    def step(self, rewards: Array, dones: Array) -> list[tuple[int, float, int]]:
        """Adds a step's rewards; returns (env, return, length) of each episode that ended, and starts it anew."""
        self.returns += rewards
        self.lengths += 1
        ended = np.flatnonzero(dones)
        episodes = [(int(i), float(self.returns[i]), int(self.lengths[i])) for i in ended]
        self.returns[ended] = 0.0
        self.lengths[ended] = 0
        return episodes


class EnvPoolVectorEnv:
    """EnvPool's C++ envs as a SAME_STEP vector env: its own autoreset is NEXT_STEP-like, so an env that ends is reset at
    once by id, and its final observation goes to info["final_obs"]."""

    def __init__(self, env_id: str, num_envs: int, max_episode_steps: int | None = None) -> None:
        self.env_id, self.num_envs = env_id, num_envs
        self.pool: Any = None  # an envpool env, made at reset
        self.kwargs: dict[str, Any] = {"num_envs": num_envs, "num_threads": min(num_envs, len(os.sched_getaffinity(0)))}
        if max_episode_steps:
            self.kwargs["max_episode_steps"] = max_episode_steps

    def reset(self, *, seed: int | Sequence[int]) -> tuple[Array, dict[str, Any]]:
        """Env i gets seed + i, as gymnasium's vector envs seed them, or seed[i]. EnvPool seeds its envs when it makes a
        pool, and its reset takes no seed: a reset makes a new pool."""
        import envpool

        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else seed
        self.close()
        with warnings.catch_warnings(action="ignore"):
            self.pool = envpool.make(self.env_id, "gymnasium", env_seed=[s & 0x7FFFFFFF for s in seeds], **self.kwargs)
        return self.pool.reset()[0].copy(), {}  # EnvPool takes int32 seeds

    def step(self, actions: Array) -> tuple[Array, Array, Array, Array, dict[str, Any]]:
        obs, reward, terminated, truncated, _ = self.pool.step(actions)
        obs = obs.copy()
        done = np.flatnonzero(terminated | truncated)
        info = {}
        if len(done):
            info["final_obs"] = obs.copy()
            reset_obs, reset_info = self.pool.reset(done.astype(np.int32))
            obs[reset_info["env_id"]] = reset_obs
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


class LiveMembers:
    """GRPO's members as plain gymnasium envs: reset with a seed each, stepping only those whose episode still runs. (On
    EnvPool and AsyncVectorEnv, the envs of ended members step on and autoreset; the rollout masks them.)"""

    def __init__(self, env_fn: Callable[[], gym.Env[Any, Any]], num_members: int) -> None:
        self.envs = [env_fn() for _ in range(num_members)]
        self.live = np.ones(num_members, bool)

    def reset(self, *, seed: Sequence[int]) -> tuple[Array, dict[str, Any]]:
        self.live = np.ones(len(self.envs), bool)
        self.obs = np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, seed)])
        return self.obs, {}

    def step(self, actions: Array) -> tuple[Array, Array, Array, Array, dict[str, Any]]:
        n = len(self.envs)
        reward, terminated, truncated = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        for m in np.flatnonzero(self.live):
            self.obs[m], reward[m], terminated[m], truncated[m], _ = self.envs[m].step(actions[m])
        self.live &= ~(terminated | truncated)
        return self.obs, reward, terminated, truncated, {}

    def close(self) -> None:
        for env in self.envs:
            env.close()


def reset_seed(seed: int, iteration: int) -> int:
    """The envs' reset seed when a run (re)starts at `iteration`: the seed itself for a fresh run, else one drawn from
    (seed, iteration), so a resumed seed-1 run does not replay the episodes of a fresh seed-2 run."""
    if iteration == 0:
        return seed
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0] & 0x3FFFFFFF)  # room for + env index


# ---- running statistics ----


class RunningMeanStd:
    """Running mean and variance of batches (Chan et al.), float64 tensors."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean, self.var = torch.zeros(shape, dtype=torch.float64), torch.ones(shape, dtype=torch.float64)
        self.count = 1e-4

    def update(self, x: torch.Tensor) -> None:
        """Takes in a batch of rows (the envs of one step)."""
        n, total = x.shape[0], self.count + x.shape[0]
        batch_var, batch_mean = torch.var_mean(x.double(), 0, correction=0)
        delta = batch_mean - self.mean
        self.mean = torch.add(self.mean, delta, alpha=n / total)
        # (count * var + n * batch_var + delta^2 * count * n / total) / total, in three fused calls
        self.var = (self.var * (self.count / total)).add_(batch_var, alpha=n / total)
        self.var.addcmul_(delta, delta, value=self.count * n / total**2)
        self.count = total

    def state_dict(self) -> StateDict:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count}

    def load_state_dict(self, state: StateDict) -> None:
        self.mean, self.var = state["mean"].double().clone(), state["var"].double().clone()
        self.count = float(state["count"])


def normalize_obs(obs: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, clip: float, enabled: bool) -> torch.Tensor:
    """The observation normalization, written once: minus the running mean, over the running std, clipped, in float64 as
    the statistics (IEEE arithmetic: the bits numpy's would give), then float32 for the networks."""
    if not enabled:
        return obs.to(torch.float32, copy=True)  # a copy, as numpy's astype: the caller may keep the env's buffer
    return ((obs.double() - mean) / torch.sqrt(var + 1e-8)).clamp(-clip, clip).float()


class ObsNormalizer(RunningMeanStd):
    """Observations minus their running mean, over their running std, clipped; float32 for the policy."""

    def __init__(self, shape: tuple[int, ...], clip: float, enabled: bool = True, frozen: bool = False) -> None:
        super().__init__(shape)
        self.clip, self.enabled, self.frozen = clip, enabled, frozen

    def __call__(self, obs: torch.Tensor, update: bool = False) -> torch.Tensor:
        """The rollout's call: the statistics take the batch in first (update), then normalize it."""
        if self.enabled and update and not self.frozen:
            self.update(obs)
        return self.normalize(obs)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """With the statistics of now (they change as the run trains)."""
        return normalize_obs(obs, self.mean, self.var, self.clip, self.enabled)

    def freeze(self) -> "FrozenObsNorm":
        """The normalization with a copy of the statistics of now, as a module's buffers: what --export writes."""
        return FrozenObsNorm(self.mean.clone(), self.var.clone(), self.clip, self.enabled)


class FrozenObsNorm(nn.Module):
    """normalize_obs with fixed statistics (float64 buffers)."""

    mean: torch.Tensor
    var: torch.Tensor

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, clip: float, enabled: bool) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("var", var)
        self.clip, self.enabled = clip, enabled

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return normalize_obs(obs, self.mean, self.var, self.clip, self.enabled)


class RewardScaler:
    """CleanRL's reward scaling: each reward over the running std of the discounted return, which takes it in first."""

    def __init__(self, num_envs: int, gamma: float, clip: float, enabled: bool = True) -> None:
        self.rms, self.returns = RunningMeanStd(), torch.zeros(num_envs, dtype=torch.float64)
        self.gamma, self.clip, self.enabled = gamma, clip, enabled

    def __call__(self, rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """rewards (N,), dones (N,) bool -> the scaled rewards, float32."""
        if not self.enabled:
            return rewards.float()
        self.returns.mul_(self.gamma).add_(rewards)
        self.rms.update(self.returns)
        self.returns.masked_fill_(dones, 0.0)
        return (rewards / torch.sqrt(self.rms.var + 1e-8)).clamp_(-self.clip, self.clip).float()

    def state_dict(self) -> StateDict:
        return {"rms": self.rms.state_dict()}

    def load_state_dict(self, state: StateDict) -> None:
        """The statistics only: a resumed run's envs start new episodes, whose discounted returns start at 0."""
        self.rms.load_state_dict(state["rms"])
        self.returns = torch.zeros_like(self.returns)


class RewardDelay:
    """Delayed rewards (--reward-delay): what each env earns is held, and paid at once every `delay` steps and at the end
    of its episode (termination or truncation); `episode` pays the episode's whole return at its last step. An episode's
    delayed rewards sum to its return. A resumed run starts new episodes, so nothing held crosses a checkpoint."""

    def __init__(self, num_envs: int, delay: int | Literal["episode"]) -> None:
        self.every = math.inf if delay == "episode" else delay
        self.held = torch.zeros(num_envs, dtype=torch.float64)
        self.steps = torch.zeros(num_envs, dtype=torch.int64)

    def __call__(self, rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """rewards (N,), dones (N,) bool -> what is paid at this step, float64."""
        if self.every == 1:  # no delay: each step pays its own reward
            return rewards.double()
        self.held += rewards
        self.steps += 1
        pay = dones | (self.steps >= self.every)
        paid = torch.where(pay, self.held, 0.0)
        self.held.masked_fill_(pay, 0.0)
        self.steps.masked_fill_(pay, 0)
        return paid

    @staticmethod
    def of_episodes(rewards: torch.Tensor, mask: torch.Tensor, delay: int | Literal["episode"]) -> torch.Tensor:
        """The delayed rewards of a (T, M) rollout of M episodes that start at t = 0 (GRPO's members): mask[t, m] = 1
        while m's runs; its last step (an end, or the budget's cut) pays what is held."""
        ends = mask * (1 - torch.cat([mask[1:], torch.zeros_like(mask[:1])])) > 0
        paid = RewardDelay(mask.shape[1], delay)
        return torch.stack([paid(step_rewards, step_ends) for step_rewards, step_ends in zip(rewards * mask, ends)])
