"""PPO with a diagonal Gaussian policy for continuous control, in one file.

Proximal Policy Optimization (Schulman et al., 2017, arXiv 1707.06347) with the implementation details of CleanRL's
`ppo_continuous_action.py` ("The 37 Implementation Details of PPO", Huang et al., ICLR blog track 2022), and three changes:
- time limits are not deaths: a truncated episode is bootstrapped with the value of its final observation (Pardo et al.,
  "Time Limits in Reinforcement Learning", ICML 2018);
- the running observation and reward statistics are checkpointed with the agent, and frozen for evaluation;
- gymnasium's autoreset is SAME_STEP: no transition crosses an episode boundary.
The run itself (its directory, logs, checkpoints, resume, evaluation, the CLI) is runlib.py's.
"""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Normal

import runlib  # the update step, the policy call, where a signal may stop the run
from envlib import (
    Array,
    EnvPoolVectorEnv,
    Episodes,
    ObsNormalizer,
    RewardDelay,
    RewardScaler,
    VectorEnv,
    reset_seed,
    vector_env,
)
from policylib import MeanPolicy
from runlib import Run, RunArgs, Timings, UsageError, check_arg_ranges, check_env, cli, fast_render, lr_factor, setup_torch

ALGO = Path(__file__).stem  # the script's name: a copy of it names its runs and checkpoints after itself


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run directory's name)"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch and the environments)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled, train on CUDA when it is available (else on CPU: the log's first line says which)"""
    compile: bool = False
    """if toggled, `torch.compile` the update step, and on CUDA the policy call (a one-off ~5 s; ~30 s on a cold cache)"""
    torch_threads: int = 1
    """torch CPU threads (1 is fastest for small networks; 0 keeps torch's default)"""
    runs_dir: str = "runs"
    """where run directories are created: {runs_dir}/{env_id}__{exp_name}__seed{seed}"""
    resume: bool = False
    """continue the run in the run directory from checkpoints/latest.pt (starts fresh if there is none)"""
    init_from: Optional[str] = None
    """start from the networks and normalization statistics of this checkpoint (this script's or its PPO sibling's)"""
    init_critic: bool = True
    """with --init-from: load its critic too (off: a fresh critic; the actor and the observation statistics only)"""
    config: Optional[str] = None
    """read arguments from a YAML, TOML or JSON file (keys: the flags' names; a run's metrics.json too); flags given win"""

    env_id: str = "Hopper-v4"
    """the gymnasium env (continuous actions, flat observations); MuJoCo v4 as in CleanRL's published figures, v5 runs too"""
    env_backend: Literal["gymnasium", "envpool"] = "gymnasium"
    """the training envs: `gymnasium`, or `envpool` (C++, batched; Linux x86_64); evaluation always runs gymnasium's env"""
    vector_mode: Literal["sync", "async"] = "sync"
    """gymnasium vector env: `sync` steps the envs in this process, `async` in one subprocess each (not used by envpool)"""
    total_timesteps: int = 1_000_000
    """total environment steps of the experiment"""
    num_envs: int = 1
    """the number of parallel environments"""
    max_episode_steps: Optional[int] = None
    """override the env's time limit (episode length) for training and evaluation"""
    reward_delay: int | Literal["episode"] = 1
    """train on delayed rewards: K steps' rewards paid at the last, `episode` all at the end (1: none; eval: the env's)"""

    # Algorithm
    num_steps: int = 2048
    """the number of steps to run in each environment per policy rollout"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """the learning rate over the run: `constant`, `linear` to 0 (CleanRL's --anneal-lr) or `cosine` to 0"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 32
    """the number of mini-batches"""
    update_epochs: int = 10
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """toggle advantage normalization (per mini-batch)"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """toggle the clipped value loss, as in the PPO paper's reference code"""
    ent_coef: float = 0.0
    """coefficient of the entropy bonus"""
    vf_coef: float = 0.5
    """coefficient of the value function loss"""
    max_grad_norm: float = 0.5
    """the maximum norm for the global gradient clipping"""
    target_kl: Optional[float] = None
    """stop the update epochs early when the approximate KL exceeds this (None: never)"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer sizes of the actor and of the critic MLPs (tanh)"""
    norm_obs: bool = True
    """toggle running observation normalization"""
    freeze_init_norm: bool = True
    """with --init-from: keep the loaded observation statistics fixed, as the policy learned them (off: update them)"""
    norm_reward: bool = True
    """toggle reward scaling by the running std of the discounted return"""
    clip_obs: float = 10.0
    """normalized observations are clipped to [-clip_obs, clip_obs]"""
    clip_reward: float = 10.0
    """scaled rewards are clipped to [-clip_reward, clip_reward]"""
    eval_every: int = 50_000
    """env steps between evaluations of the deterministic policy (0 disables evaluation)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    capture_video: bool = True
    """film the best episode of each evaluation to videos/*.mp4"""
    checkpoint_every: int = 25_000
    """env steps between checkpoints/latest.pt (0: only the final one, which is always written)"""
    eval_checkpoint: Optional[str] = None
    """evaluate this checkpoint (latest.pt, best.pt) for --eval-episodes episodes, then exit; the run's arguments apply"""
    video_path: Optional[str] = None
    """with --eval-checkpoint: where the best episode's video goes (default: next to the checkpoint, as .mp4)"""
    export: Optional[str] = None
    """with --eval-checkpoint: write its deterministic policy (observations -> actions) as a .pt2 or .onnx file, and exit"""
    track: bool = False
    """if toggled, send the TensorBoard scalars, the arguments and the eval videos to Weights & Biases"""
    wandb_project_name: str = "cleanrl"
    """the W&B project"""
    wandb_entity: Optional[str] = None
    """the W&B entity (team); None: your default"""


def make_env(env_id: str, max_episode_steps: Optional[int] = None, render_mode: Optional[str] = None) -> gym.Env:
    render: dict[str, Any] = {"render_mode": render_mode} if render_mode else {}  # an env need not take render_mode=None
    return fast_render(gym.make(env_id, max_episode_steps=max_episode_steps, **render))


def make_vector_env(args: Args) -> VectorEnv:
    if args.env_backend == "envpool":
        return EnvPoolVectorEnv(args.env_id, args.num_envs, args.max_episode_steps)
    return vector_env(partial(make_env, args.env_id, args.max_episode_steps), args.num_envs, args.vector_mode)


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def mlp(in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int, out_std: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    last = in_dim
    for size in hidden_sizes:
        layers += [layer_init(nn.Linear(last, size)), nn.Tanh()]
        last = size
    return nn.Sequential(*layers, layer_init(nn.Linear(last, out_dim), std=out_std))


class Agent(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.critic = mlp(obs_dim, hidden_sizes, 1, out_std=1.0)
        self.actor_mean = mlp(obs_dim, hidden_sizes, act_dim, out_std=0.01)
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))

    def dist(self, obs: torch.Tensor) -> Normal:
        mean = self.actor_mean(obs)
        return Normal(mean, self.actor_logstd.expand_as(mean).exp(), validate_args=False)

    def dist_and_value(self, obs: torch.Tensor) -> tuple[Normal, torch.Tensor]:
        return self.dist(obs), self.critic(obs)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """A draw from dist(obs) without building the distribution: the rollout does this every step."""
        mean = self.actor_mean(obs)
        return mean + self.actor_logstd.exp() * torch.randn_like(mean)


def env_action(action: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """The env's action: the sample clipped to the bounds (the log-prob stays that of the unclipped sample)."""
    return action.clip(low, high)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(lambda) over (T, N): (advantages, returns). next_values[t] is V of the state after step t: V(final obs) after a
    truncation, 0 after a termination (Pardo et al. 2018); dones[t] = 1 stops the sum there."""
    deltas = rewards + gamma * next_values - values
    carry = gamma * gae_lambda * (1.0 - dones)
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        lastgaelam = advantages[t] = deltas[t] + carry[t] * lastgaelam
    return advantages, advantages + values


class Batch(NamedTuple):
    """A rollout as flat tensors, (B,) or (B, dim): what ppo_loss reads, by name."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor  # of the actions under the rollout's policy
    advantages: torch.Tensor
    returns: torch.Tensor  # the critic's targets: advantages + values
    values: torch.Tensor  # the rollout's value estimates

    def subset(self, i: torch.Tensor | slice) -> "Batch":
        return Batch(*(v[i] for v in self))


LOSS_STATS = [f"losses/{k}" for k in ("approx_kl", "old_approx_kl", "clipfrac", "policy_loss", "value_loss", "entropy")]


def ppo_loss(agent: Agent, mb: Batch, args: Args) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPO loss of a minibatch, and its statistics (LOSS_STATS) as one tensor."""
    dist, newvalue = agent.dist_and_value(mb.obs)
    logratio = dist.log_prob(mb.actions).sum(-1) - mb.logprobs
    ratio = logratio.exp()
    advantages = mb.advantages
    if args.norm_adv:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
    newvalue = newvalue.view(-1)
    v_loss = (newvalue - mb.returns) ** 2
    if args.clip_vloss:
        v_clipped = mb.values + (newvalue - mb.values).clamp(-args.clip_coef, args.clip_coef)
        v_loss = torch.max(v_loss, (v_clipped - mb.returns) ** 2)
    v_loss = 0.5 * v_loss.mean()
    entropy = dist.entropy().sum(-1).mean()
    with torch.no_grad():  # http://joschu.net/blog/kl-approx.html
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1).abs() > args.clip_coef).float().mean()
        stats = torch.stack([approx_kl, (-logratio).mean(), clipfrac, pg_loss, v_loss, entropy])
    return pg_loss - args.ent_coef * entropy + args.vf_coef * v_loss, stats


UpdateStep = Callable[[Batch], torch.Tensor]


def ppo_update(update_step: UpdateStep, batch: Batch, minibatch_size: int, args: Args) -> dict[str, float]:
    """`update_epochs` passes of minibatch SGD over the batch; the mean of each LOSS_STATS."""
    stats = []
    for _ in range(args.update_epochs):
        shuffled = batch.subset(torch.randperm(len(batch.obs), device=batch.obs.device))  # then minibatches are views
        for start in range(0, len(batch.obs), minibatch_size):
            stats.append(update_step(shuffled.subset(slice(start, start + minibatch_size))))
        if args.target_kl is not None and stats[-1][0] > args.target_kl:  # approx_kl of the epoch's last minibatch
            break
    return dict(zip(LOSS_STATS, torch.stack(stats).mean(0).tolist()))


@dataclass
class Rollout:
    """T steps of N envs, filled in place by collect_rollout."""

    obs: torch.Tensor  # (T, N, obs_dim) float32, normalized
    actions: torch.Tensor  # (T, N, act_dim) float32, the unclipped samples
    rewards: torch.Tensor  # (T, N) float32, scaled
    dones: torch.Tensor  # (T, N): the episode ended at step t (its next observation is a reset's)
    terminations: torch.Tensor  # (T, N): it ended in a terminal state, worth 0 after it
    final_obs: dict[tuple[int, int], torch.Tensor]  # (t, env) -> the normalized final observation of an episode ended at t

    @staticmethod
    def empty(T: int, N: int, obs_dim: int, act_dim: int) -> "Rollout":
        zeros = partial(torch.zeros, (T, N))
        obs, actions = torch.zeros(T, N, obs_dim), torch.zeros(T, N, act_dim)
        return Rollout(obs, actions, rewards=zeros(), dones=zeros(), terminations=zeros(), final_obs={})


def collect_rollout(
    envs: VectorEnv,
    next_obs: Array,
    policy: Callable[[torch.Tensor], torch.Tensor],
    obs_norm: ObsNormalizer,
    reward_scaler: RewardScaler,
    delay: RewardDelay,
    rollout: Rollout,
    low: torch.Tensor,
    high: torch.Tensor,
    episodes: Episodes,
    on_episode: Callable[[int, float, int], None],
    timings: Timings,
) -> Array:
    """Fill `rollout` with T steps of every env (SAME_STEP autoreset: a done's final observation is in info["final_obs"]);
    on_episode(t, return, length) for each episode that ends. Returns the observations after the last step."""
    rollout.final_obs.clear()
    for t in range(len(rollout.rewards)):
        rollout.obs[t] = obs = obs_norm(torch.from_numpy(next_obs), update=True)
        t0 = time.perf_counter()
        rollout.actions[t] = action = policy(obs)
        t1 = time.perf_counter()
        next_obs, reward, terminated, truncated, info = envs.step(env_action(action, low, high).numpy())
        runlib.safe_point()  # a signal stops the run here, losing only this iteration
        timings.policy_forward_s += t1 - t0
        timings.env_step_s += time.perf_counter() - t1
        ended = terminated | truncated
        done = torch.from_numpy(ended)
        # the curves keep the env's own reward
        rollout.rewards[t] = reward_scaler(delay(torch.from_numpy(reward), done), done)
        rollout.dones[t] = done
        rollout.terminations[t] = torch.from_numpy(terminated)
        for i, episodic_return, length in episodes.step(reward, ended):
            rollout.final_obs[t, i] = obs_norm(torch.from_numpy(info["final_obs"][i][None]))[0]
            on_episode(t, episodic_return, length)
    return next_obs


def make_batch(agent: Agent, rollout: Rollout, next_obs: torch.Tensor, args: Args, device: torch.device) -> Batch:
    """Values and log-probs of the rollout in one batched call each (the policy did not change during it), then GAE."""
    T, N = rollout.rewards.shape
    obs = rollout.obs.view(T * N, -1).to(device)
    actions = rollout.actions.view(T * N, -1).to(device)
    with torch.no_grad():
        logprobs = agent.dist(obs).log_prob(actions).sum(-1)
        values = agent.critic(obs).view(T, N).cpu()
        # V of the state after each step: the next step's, after the last step next_obs's, and where an env reset after
        # step t the episode's final observation's; the last two in one call
        bootstrap_obs = torch.cat([next_obs, *(o[None] for o in rollout.final_obs.values())])
        bootstrap_values = agent.critic(bootstrap_obs.to(device)).view(-1).cpu()
        next_values = torch.cat([values[1:], bootstrap_values[None, :N]])
        for (t, i), value in zip(rollout.final_obs, bootstrap_values[N:]):
            next_values[t, i] = value
    next_values *= 1.0 - rollout.terminations
    advantages, returns = compute_gae(rollout.rewards, values, next_values, rollout.dones, args.gamma, args.gae_lambda)
    return Batch(
        obs=obs,
        actions=actions,
        logprobs=logprobs,
        advantages=advantages.view(-1).to(device),
        returns=returns.view(-1).to(device),
        values=values.view(-1).to(device),
    )


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns]: how much of the returns the critic explains (1 is all, <= 0 none)."""
    var = returns.var(correction=0).item()
    return 1.0 - (returns - values).var(correction=0).item() / var if var else 0.0


def main(args: Args) -> None:
    batch_size, minibatch_size, num_iterations = check_args(args)
    obs_space, act_space = check_env(args)
    check_spaces(args, obs_space, act_space)
    run = Run(args, ALGO, total_steps=num_iterations * batch_size)
    device = setup_torch(args)
    obs_dim, act_dim = obs_space.shape[0], act_space.shape[0]
    low, high = torch.from_numpy(act_space.low.astype(np.float32)), torch.from_numpy(act_space.high.astype(np.float32))
    agent = Agent(obs_dim, act_dim, args.hidden_sizes).to(device)
    # fused Adam: one kernel for all parameters; a tensor learning rate: annealing it does not recompile --compile's step
    optimizer = torch.optim.Adam(agent.parameters(), lr=torch.tensor(args.learning_rate, device=device), eps=1e-5, fused=True)
    obs_norm = ObsNormalizer((obs_dim,), args.clip_obs, args.norm_obs, frozen=bool(args.init_from) and args.freeze_init_norm)
    reward_scaler = RewardScaler(args.num_envs, args.gamma, args.clip_reward, args.norm_reward)
    run.restore(agent=agent, optimizer=optimizer, obs_norm=obs_norm, reward_scaler=reward_scaler)

    mean_policy = MeanPolicy(agent, obs_norm, low, high, env_action).to(device)  # the evaluation's policy, and --export's
    make_eval_env = partial(make_env, args.env_id, args.max_episode_steps)  # render_mode -> an env
    if args.eval_checkpoint:  # evaluate the saved policy (or --export it); no training
        run.evaluate_checkpoint(make_eval_env, mean_policy)
        return

    def on_episode(t: int, episodic_return: float, length: int) -> None:  # an episode ended at step t of the rollout
        run.episode(global_step + (t + 1) * args.num_envs, episodic_return, length)

    policy = runlib.policy_call(agent.sample, args, device)  # on CUDA with --compile: a CUDA graph
    update_step = runlib.make_update_step(agent, optimizer, ppo_loss, args)
    envs = make_vector_env(args)
    # A resumed run cannot restore the envs' internal state: it starts new episodes from new seeds.
    next_obs, _ = envs.reset(seed=reset_seed(args.seed, run.iteration))
    rollout = Rollout.empty(args.num_steps, args.num_envs, obs_dim, act_dim)
    episodes = Episodes(args.num_envs)
    delay = RewardDelay(args.num_envs, args.reward_delay)  # a resume starts new episodes: nothing is held

    global_step = run.global_step
    for iteration in range(run.iteration + 1, num_iterations + 1):
        t_iter = time.perf_counter()
        optimizer.param_groups[0]["lr"].fill_(
            lr_factor(args.lr_schedule, (iteration - 1) / num_iterations) * args.learning_rate
        )
        timings = Timings()
        with torch.inference_mode():
            next_obs = collect_rollout(
                envs, next_obs, policy, obs_norm, reward_scaler, delay, rollout, low, high, episodes, on_episode, timings
            )
        timings.rollout_s = time.perf_counter() - t_iter
        global_step += batch_size
        batch = make_batch(agent, rollout, obs_norm(torch.from_numpy(next_obs)), args, device)
        stats = ppo_update(update_step, batch, minibatch_size, args)
        stats["losses/explained_variance"] = explained_variance(batch.values, batch.returns)
        timings.update_s = time.perf_counter() - t_iter - timings.rollout_s
        run.end_iteration(iteration, global_step, stats, timings, make_eval_env, mean_policy.act)
    envs.close()
    run.close()


def check_spaces(args: RunArgs, obs_space: gym.spaces.Box, act_space: gym.spaces.Box) -> None:
    """The networks take flat observations; any Box of actions is clipped to its bounds (grpo_continuous.py's too)."""
    if len(obs_space.shape) != 1:
        raise UsageError(f"{args.env_id} has observations of shape {obs_space.shape}; this script needs flat vectors")


def check_args(args: Args) -> tuple[int, int, int]:
    """Every argument a user can get wrong, checked before anything is written: CleanRL's batch, minibatch and iteration
    counts."""
    positive = ("num_envs", "num_steps", "num_minibatches", "update_epochs", "learning_rate", "clip_coef", "max_grad_norm")
    check_arg_ranges(args, positive=(*positive, "clip_obs", "clip_reward"), positive_or_none=("target_kl",))
    if not (0 < args.gamma <= 1 and 0 <= args.gae_lambda <= 1):
        raise UsageError("--gamma must be in (0, 1] and --gae-lambda in [0, 1]")
    batch_size = args.num_envs * args.num_steps
    if batch_size % args.num_minibatches:
        raise UsageError(f"--num-minibatches {args.num_minibatches} does not divide the batch of {batch_size} steps")
    if args.total_timesteps < batch_size:
        raise UsageError(f"--total-timesteps {args.total_timesteps} is less than one batch ({batch_size} steps)")
    return batch_size, batch_size // args.num_minibatches, args.total_timesteps // batch_size


if __name__ == "__main__":
    cli(main, Args, ALGO)
