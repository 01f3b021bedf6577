"""PPO on pixels: CarRacing from frames, a configurable CNN and a Beta policy, in one file.

ppo_beta_continuous.py (CleanRL's PPO, time limits bootstrapped, SAME_STEP autoreset, a Beta policy for CarRacing's
asymmetric action bounds) on frames: frame skip, grayscale, area resizing and frame stacking, the same in training and
evaluation, on both env backends (pixels.py); uint8 up to a CNN trunk (Nature-DQN's by default, Mnih et al. 2015), which
scales them. grpo_cnn_carracing.py imports the CNN trunk and the Beta policy from here. The run itself (its directory,
logs, checkpoints, resume, evaluation, the CLI) is runlib.py's.
"""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple, Optional, Protocol, TypeVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Beta

import runlib  # the update step, the policy call, where a signal may stop the run
from envlib import Array, Episodes, RewardDelay, RewardScaler, VectorEnv, reset_seed, vector_env
from pixels import FrameArgs, Frames, FramesEnvPool
from policylib import MeanPolicy
from runlib import Run, Timings, UsageError, check_arg_ranges, check_env, cli, lr_factor, setup_torch

ALGO = Path(__file__).stem  # the script's name: a copy of it names its runs and checkpoints after itself
Layer = TypeVar("Layer", nn.Linear, nn.Conv2d)


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

    env_id: str = "CarRacing-v3"
    """the id of the gymnasium environment (continuous actions with finite bounds, RGB image observations)"""
    env_backend: Literal["gymnasium", "envpool"] = "gymnasium"
    """the training envs: `gymnasium`, or `envpool` (C++, batched; Linux x86_64); evaluation always runs gymnasium's env"""
    vector_mode: Literal["sync", "async"] = "sync"
    """gymnasium vector env: `sync` steps the envs in this process, `async` in one subprocess each (not used by envpool)"""
    total_timesteps: int = 1_000_000
    """total agent steps of the experiment (one agent step is frame_skip env frames)"""
    num_envs: int = 8
    """the number of parallel environments"""
    max_episode_steps: Optional[int] = None
    """override the env's time limit (episode length, in env frames: CarRacing's is 1000) for training and evaluation"""
    reward_delay: int | Literal["episode"] = 1
    """train on delayed rewards: K steps' rewards paid at the last, `episode` all at the end (1: none; eval: the env's)"""

    # Observations (the same wrappers in training and evaluation; frames stay uint8)
    frame_skip: int = 4
    """repeat each action for this many env frames, summing their rewards (one agent step = frame_skip frames)"""
    grayscale: bool = True
    """convert the frames to grayscale"""
    resize: Optional[tuple[int, int]] = (64, 64)
    """resize the frames to (height, width) by area averaging (None: keep the env's size)"""
    frame_stack: int = 4
    """an observation is the last frame_stack frames, oldest first"""
    max_negative_steps: Optional[int] = None
    """end an episode (as a truncation) after this many consecutive agent steps of negative reward (None: never)"""

    # Algorithm
    num_steps: int = 256
    """the number of steps to run in each environment per policy rollout"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """the learning rate over the run: `constant`, `linear` to 0 (CleanRL's --anneal-lr) or `cosine` to 0"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 8
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
    cnn_channels: tuple[int, ...] = (32, 64, 64)
    """output channels of each convolution of the CNN trunk (ReLU after each)"""
    cnn_kernel_sizes: tuple[int, ...] = (8, 4, 3)
    """kernel size of each convolution of the CNN trunk"""
    cnn_strides: tuple[int, ...] = (4, 2, 1)
    """stride of each convolution of the CNN trunk"""
    cnn_feature_size: int = 512
    """size of the trunk's output features (a linear layer and ReLU after the convolutions)"""
    shared_trunk: bool = True
    """toggle one CNN trunk shared by the actor and critic heads (off: each head has its own trunk)"""
    hidden_sizes: tuple[int, ...] = (256,)
    """hidden layer sizes of the actor head and of the critic head MLPs (tanh) on the trunk's features"""
    norm_reward: bool = True
    """toggle reward scaling by the running std of the discounted return"""
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


class PixelArgs(FrameArgs, Protocol):
    """The Args fields that the code both CNN scripts share (the frames, the CNN's checks) reads."""

    env_id: str
    cnn_channels: tuple[int, ...]
    cnn_kernel_sizes: tuple[int, ...]
    cnn_strides: tuple[int, ...]


def make_env(args: Args, render_mode: Optional[str] = None) -> gym.Env[Any, Any]:
    render: dict[str, Any] = {"render_mode": render_mode} if render_mode else {}  # an env need not take render_mode=None
    env = gym.make(args.env_id, max_episode_steps=args.max_episode_steps, **render)
    return Frames.of(args).wrap(env)


def make_vector_env(args: Args) -> VectorEnv:
    if args.env_backend == "envpool":
        return FramesEnvPool(args.env_id, Frames.of(args), args.num_envs, args.max_episode_steps)
    return vector_env(partial(make_env, args), args.num_envs, args.vector_mode)


def layer_init(layer: Layer, std: float = np.sqrt(2), bias_const: float = 0.0) -> Layer:
    assert layer.bias is not None
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


class CNNFeatureExtractor(nn.Module):
    """uint8 frames (B, stack, H, W, C), scaled to [0, 1] here, -> features: the convolutions of --cnn-channels,
    --cnn-kernel-sizes and --cnn-strides, and a linear layer to `feature_size`, each with ReLU."""

    def __init__(self, obs_shape: tuple[int, ...], args: PixelArgs, feature_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = obs_shape[0] * obs_shape[3]
        for out, kernel, stride in zip(args.cnn_channels, args.cnn_kernel_sizes, args.cnn_strides):
            layers += [layer_init(nn.Conv2d(last, out, kernel, stride)), nn.ReLU()]
            last = out
        # channels-last (NHWC) weights and input: oneDNN's CPU convolutions and their backward run ~1/3 faster than in NCHW;
        # torch's type stubs lack Module.to's memory_format
        self.convs = nn.Sequential(*layers, nn.Flatten()).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        flat = self.convs(torch.zeros(1, obs_shape[0] * obs_shape[3], *obs_shape[1:3])).shape[1]
        self.fc = nn.Sequential(layer_init(nn.Linear(flat, feature_size)), nn.ReLU())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        B, S, H, W, C = obs.shape  # -> (B, S * C, H, W), channel s * C + c, as an NHWC view of the bytes
        x = obs.permute(0, 2, 3, 1, 4).reshape(B, H, W, S * C).permute(0, 3, 1, 2).float() / 255.0
        return self.fc(self.convs(x))


BETA_EPS = 1e-6  # samples are kept this far from 0 and 1, where float32 rounding would make log x or log(1 - x) infinite


def beta_dist(out: torch.Tensor) -> Beta:
    """The actor's 2 * act_dim outputs -> Beta(alpha, beta), alpha and beta = 1 + softplus > 1: unimodal (Chou et al.)."""
    alpha, beta = (1.0 + nn.functional.softplus(out)).chunk(2, dim=-1)
    return Beta(alpha, beta, validate_args=False)


class Agent(nn.Module):
    def __init__(self, obs_shape: tuple[int, ...], act_dim: int, args: Args) -> None:
        super().__init__()
        self.actor_trunk = CNNFeatureExtractor(obs_shape, args, args.cnn_feature_size)
        self.critic_trunk = None if args.shared_trunk else CNNFeatureExtractor(obs_shape, args, args.cnn_feature_size)
        self.critic = mlp(args.cnn_feature_size, args.hidden_sizes, 1, out_std=1.0)
        self.actor = mlp(args.cnn_feature_size, args.hidden_sizes, 2 * act_dim, out_std=0.01)

    def dist(self, obs: torch.Tensor) -> Beta:
        return beta_dist(self.actor(self.actor_trunk(obs)))

    def dist_and_value(self, obs: torch.Tensor) -> tuple[Beta, torch.Tensor]:  # the trunk runs once when it is shared
        features = self.actor_trunk(obs)
        critic_features = features if self.critic_trunk is None else self.critic_trunk(obs)
        return beta_dist(self.actor(features)), self.critic(critic_features)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        return self.dist(obs).sample().clamp(BETA_EPS, 1.0 - BETA_EPS)


def env_action(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A sample x in (0, 1) -> the env's action in [low, high]. The log-prob is that of x: the map's Jacobian is a
    constant, which cancels in the PPO ratio."""
    return low + (high - low) * x


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
    """A rollout as flat tensors, (B,) or (B, ...): what ppo_loss reads, by name."""

    obs: torch.Tensor  # uint8 frames
    actions: torch.Tensor  # the Beta samples x in (0, 1)
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

    obs: torch.Tensor  # (T, N, stack, H, W, C) uint8: the frames as the envs give them (the network scales them)
    actions: torch.Tensor  # (T, N, act_dim) float32: the Beta samples x in (0, 1), not the env's actions
    rewards: torch.Tensor  # (T, N) float32, scaled
    dones: torch.Tensor  # (T, N): the episode ended at step t (its next observation is a reset's)
    terminations: torch.Tensor  # (T, N): it ended in a terminal state, worth 0 after it
    final_obs: dict[tuple[int, int], torch.Tensor]  # (t, env) -> the final observation of an episode that ended at t

    @staticmethod
    def empty(T: int, N: int, obs_shape: tuple[int, ...], act_dim: int) -> "Rollout":
        zeros = partial(torch.zeros, (T, N))
        obs = torch.zeros((T, N, *obs_shape), dtype=torch.uint8)
        actions = torch.zeros(T, N, act_dim)
        return Rollout(obs, actions, rewards=zeros(), dones=zeros(), terminations=zeros(), final_obs={})


def collect_rollout(
    envs: VectorEnv,
    next_obs: Array,
    policy: Callable[[torch.Tensor], torch.Tensor],
    reward_scaler: RewardScaler,
    delay: RewardDelay,
    rollout: Rollout,
    low: torch.Tensor,
    high: torch.Tensor,
    episodes: Episodes,
    on_episode: Callable[[int, float, int], None],
    timings: Timings,
) -> Array:
    """ppo_beta_continuous.py's collect_rollout on uint8 frames, not normalized: fill `rollout` with T steps of every env
    (SAME_STEP autoreset: a done's final observation is in info["final_obs"]); on_episode(t, return, length) for each
    episode that ends. Returns the observations after the last step."""
    rollout.final_obs.clear()
    for t in range(len(rollout.rewards)):
        rollout.obs[t] = torch.from_numpy(next_obs)
        t0 = time.perf_counter()
        rollout.actions[t] = action = policy(rollout.obs[t])  # a tensor: the clip below takes it
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
            rollout.final_obs[t, i] = torch.tensor(info["final_obs"][i])
            on_episode(t, episodic_return, length)
    return next_obs


def make_batch(agent: Agent, rollout: Rollout, next_obs: Array, args: Args, device: torch.device, chunk: int = 1024) -> Batch:
    """Values and log-probs `chunk` frames at a time (a rollout of frames at once would hold gigabytes), then GAE."""
    T, N = rollout.rewards.shape
    obs = rollout.obs.flatten(0, 1)
    actions = rollout.actions.flatten(0, 1)
    # V of the state after each step: the next step's; after the last step next_obs's, and where an env reset after step
    # t the episode's final observation's, these two in the same calls
    bootstrap_obs = torch.cat([torch.from_numpy(next_obs), *(o[None] for o in rollout.final_obs.values())])
    with torch.no_grad():  # a dist holds only its parameters
        parts = [agent.dist_and_value(o.to(device)) for o in obs.split(chunk)]
        logprobs = torch.cat([dist.log_prob(a.to(device)).sum(-1) for (dist, _), a in zip(parts, actions.split(chunk))])
        values = torch.cat([value.view(-1) for _, value in parts]).cpu().view(T, N)
        bootstrap_values = torch.cat([agent.dist_and_value(o.to(device))[1].view(-1) for o in bootstrap_obs.split(chunk)])
    next_value, final_values = bootstrap_values.cpu().split([N, len(rollout.final_obs)])
    next_values = torch.cat([values[1:], next_value.view(1, N)])
    for (t, i), value in zip(rollout.final_obs, final_values):
        next_values[t, i] = value
    next_values *= 1.0 - rollout.terminations
    advantages, returns = compute_gae(rollout.rewards, values, next_values, rollout.dones, args.gamma, args.gae_lambda)
    return Batch(
        obs=obs.to(device),
        actions=actions.to(device),
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
    obs_shape = check_spaces(args, obs_space, act_space)
    run = Run(args, ALGO, total_steps=num_iterations * batch_size)
    device = setup_torch(args)
    act_dim = act_space.shape[0]
    low, high = torch.from_numpy(act_space.low.astype(np.float32)), torch.from_numpy(act_space.high.astype(np.float32))
    agent = Agent(obs_shape, act_dim, args).to(device)
    # fused Adam: one kernel for all parameters; a tensor learning rate: annealing it does not recompile --compile's step
    optimizer = torch.optim.Adam(agent.parameters(), lr=torch.tensor(args.learning_rate, device=device), eps=1e-5, fused=True)
    reward_scaler = RewardScaler(args.num_envs, args.gamma, args.clip_reward, args.norm_reward)
    run.restore(agent=agent, optimizer=optimizer, reward_scaler=reward_scaler)

    mean_policy = MeanPolicy(agent, None, low, high, env_action).to(device)  # the evaluation's policy, and --export's
    make_eval_env = partial(make_env, args)  # render_mode -> an env with the training wrappers
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
    rollout = Rollout.empty(args.num_steps, args.num_envs, obs_shape, act_dim)
    episodes = Episodes(args.num_envs)
    delay = RewardDelay(args.num_envs, args.reward_delay)  # a resume starts new episodes: nothing is held

    global_step = run.global_step
    for iteration in range(run.iteration + 1, num_iterations + 1):
        t_iter = time.perf_counter()
        lr = lr_factor(args.lr_schedule, (iteration - 1) / num_iterations) * args.learning_rate
        optimizer.param_groups[0]["lr"].fill_(lr)
        timings = Timings()
        with torch.inference_mode():
            next_obs = collect_rollout(
                envs, next_obs, policy, reward_scaler, delay, rollout, low, high, episodes, on_episode, timings
            )
        timings.rollout_s = time.perf_counter() - t_iter
        global_step += batch_size
        batch = make_batch(agent, rollout, next_obs, args, device)
        stats = ppo_update(update_step, batch, minibatch_size, args)
        stats["losses/explained_variance"] = explained_variance(batch.values, batch.returns)
        timings.update_s = time.perf_counter() - t_iter - timings.rollout_s
        run.end_iteration(iteration, global_step, stats, timings, make_eval_env, mean_policy.act)
    envs.close()
    run.close()


def check_spaces(args: PixelArgs, obs_space: gym.spaces.Box, act_space: gym.spaces.Box) -> tuple[int, ...]:
    """What both CNN scripts need beyond runlib's checks: finite action bounds (the Beta policy maps (0, 1) onto them),
    (H, W, 3) uint8 images, a --resize and one --cnn-* entry per convolution, and frames that the convolutions do not
    shrink to nothing. Returns the observations' shape, (frame_stack, height, width, channels)."""
    if not (np.isfinite(act_space.low).all() and np.isfinite(act_space.high).all()):
        raise UsageError(f"{args.env_id} has unbounded actions; a Beta policy needs finite bounds")
    shape = obs_space.shape
    if not (len(shape) == 3 and shape[2] == 3 and obs_space.dtype == np.uint8):
        raise UsageError(f"{args.env_id} has observations of shape {shape}; this CNN script needs (H, W, 3) uint8 images")
    if args.resize is not None and min(args.resize) <= 0:
        raise UsageError(f"--resize needs a positive height and width, got {args.resize}")
    convs = (args.cnn_channels, args.cnn_kernel_sizes, args.cnn_strides)
    if len(set(map(len, convs))) != 1:
        raise UsageError(f"--cnn-channels/-kernel-sizes/-strides need one positive entry per convolution each, got {convs}")
    with Frames.of(args).wrap(gym.make(args.env_id)) as env:
        obs_shape = env.observation_space.shape or ()
    try:  # the convolutions' output size, as the network computes it
        CNNFeatureExtractor(obs_shape, args, 1)
    except RuntimeError:
        raise UsageError(f"--cnn-kernel-sizes and --cnn-strides shrink a {obs_shape[1]}x{obs_shape[2]} frame to nothing")
    return obs_shape


def check_args(args: Args) -> tuple[int, int, int]:
    """Every argument a user can get wrong, checked before anything is written (the frames' and the CNN's with the env,
    check_spaces): CleanRL's batch, minibatch and iteration counts."""
    positive: tuple[str, ...] = ("num_envs", "num_steps", "num_minibatches", "update_epochs", "learning_rate", "clip_coef")
    positive += ("max_grad_norm", "clip_reward", "frame_skip", "frame_stack", "cnn_feature_size")
    check_arg_ranges(args, positive, non_negative=("ent_coef",), positive_or_none=("target_kl", "max_negative_steps"))
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
