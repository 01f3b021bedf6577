"""GRPO on pixels: CarRacing from frames, a critic-free policy gradient with same-track groups, in one file.

grpo_continuous.py (Group Relative Policy Optimization, Shao et al., DeepSeekMath, arXiv 2402.03300: groups of G episodes
from one start state, advantages relative to the group by `--adv-mode`, PPO's clipped surrogate plus a k3 KL penalty to a
reference policy; a resumed run replays the uninterrupted one) with ppo_cnn_carracing.py's frames, CNN and Beta policy.
CarRacing generates its track from the reset seed, so the members of a group, reset with one seed, drive the same track.
"""

import contextlib
import copy
import io
import itertools
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Literal, Optional

import gymnasium as gym
import imageio
import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.distributions import Beta
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: Optional[str] = None
    """the name of this experiment (part of the run directory's name; default grpo_cnn_carracing_g{group_size})"""
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

    env_id: str = "CarRacing-v3"
    """the id of the gymnasium environment (continuous actions with finite bounds, RGB image observations)"""
    env_backend: Literal["gymnasium", "envpool"] = "gymnasium"
    """the training envs: `gymnasium`, or `envpool` (C++, batched; Linux x86_64); evaluation always runs gymnasium's env"""
    vector_mode: Literal["sync", "async"] = "sync"
    """gymnasium vector env: `sync` steps the envs in this process, `async` in one subprocess each (not used by envpool)"""
    total_timesteps: int = 1_000_000
    """total agent steps of the experiment (one agent step is frame_skip env frames; the last iteration is cut to fit)"""
    max_episode_steps: Optional[int] = None
    """override the env's time limit (episode length, in env frames: CarRacing's is 1000) for training and evaluation"""

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
    group_size: int = 8
    """G: the trajectories per group, all from the same start state (at least 2)"""
    num_groups: int = 4
    """the groups per iteration, each from its own start state"""
    adv_mode: Literal["episode", "step"] = "episode"
    """group advantages: `episode` (the normalized episode return at every step) or `step` (normalized reward-to-go)"""
    adv_norm: Literal["group", "mean", "batch"] = "group"
    """advantage scale: the group's std (`group`, DeepSeekMath), none (`mean`, Dr. GRPO) or the batch's std (`batch`)"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """the learning rate over the run: `constant`, `linear` to 0 (CleanRL's --anneal-lr) or `cosine` to 0"""
    gamma: float = 0.99
    """the discount factor of the reward-to-go in `--adv-mode step` (episode returns are undiscounted)"""
    minibatch_size: int = 256
    """the number of steps per mini-batch (the batch is every valid step of the iteration's groups)"""
    update_epochs: int = 10
    """the K epochs to update the policy"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    kl_coef: float = 0.01
    """coefficient of the k3 KL penalty to the reference policy (0 disables it)"""
    ref_update_every: int = 10
    """iterations between refreshes of the reference policy (0: keep the initial one, with --init-from the loaded policy)"""
    ent_coef: float = 0.0
    """coefficient of the entropy bonus"""
    max_grad_norm: float = 0.5
    """the maximum norm for the global gradient clipping"""
    target_kl: Optional[float] = None
    """stop the update epochs early when the approximate KL to the rollout policy exceeds this (None: never)"""
    cnn_channels: tuple[int, ...] = (32, 64, 64)
    """output channels of each convolution of the CNN trunk (ReLU after each)"""
    cnn_kernel_sizes: tuple[int, ...] = (8, 4, 3)
    """kernel size of each convolution of the CNN trunk"""
    cnn_strides: tuple[int, ...] = (4, 2, 1)
    """stride of each convolution of the CNN trunk"""
    cnn_feature_size: int = 512
    """size of the trunk's output features (a linear layer and ReLU after the convolutions)"""
    hidden_sizes: tuple[int, ...] = (256,)
    """hidden layer sizes of the actor head MLP (tanh) on the trunk's features"""
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
    track: bool = False
    """if toggled, send the TensorBoard scalars, the arguments and the eval videos to Weights & Biases"""
    wandb_project_name: str = "cleanrl"
    """the W&B project"""
    wandb_entity: Optional[str] = None
    """the W&B entity (team); None: your default"""


class FrameSkip(gym.Wrapper):
    """Repeat the action `skip` frames, summing their rewards; end early after `max_negative_steps` steps of losses."""

    def __init__(self, env, skip, max_negative_steps=None):
        super().__init__(env)
        self.skip, self.max_negative_steps, self.negative_steps = skip, max_negative_steps or math.inf, 0
        self.metadata = {**env.metadata, "render_fps": env.metadata.get("render_fps", 50) / skip}  # real-time videos

    def reset(self, **kwargs):
        self.negative_steps = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        total_reward = 0.0
        for _ in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total_reward += float(reward)
            if terminated or truncated:
                break
        self.negative_steps = self.negative_steps + 1 if total_reward < 0 else 0
        return obs, total_reward, terminated, truncated or self.negative_steps >= self.max_negative_steps, info


def area_weights(n_in, n_out):
    """(n_out, n_in) weights of area resampling: output pixel i averages the input interval it covers."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo, hi, j = edges[:-1, None], edges[1:, None], np.arange(n_in)[None]
    return (np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None) / (hi - lo)).astype(np.float32)


def preprocess(args, frames):
    """(N, H, W, 3) uint8 frames -> (N, h, w, channels) uint8 on both backends: gymnasium's grayscale, area resizing."""
    if args.grayscale:
        x = frames.astype(np.float64)
        frames = (x[..., 0:1] * 0.2125 + x[..., 1:2] * 0.7154 + x[..., 2:3] * 0.0721).astype(np.uint8)
    if args.resize:
        rows, cols = area_weights(frames.shape[1], args.resize[0]), area_weights(frames.shape[2], args.resize[1])
        resized = rows @ frames.transpose(0, 3, 1, 2).astype(np.float32) @ cols.T  # (N, channels, h, w)
        frames = np.rint(resized).astype(np.uint8).transpose(0, 2, 3, 1)
    return frames


def make_carracing_env(args, render_mode=None):
    render = {"render_mode": render_mode} if render_mode else {}  # an env need not take render_mode=None
    env = gym.make(args.env_id, max_episode_steps=args.max_episode_steps, **render)
    env = FrameSkip(env, args.frame_skip, args.max_negative_steps)
    shape = preprocess(args, np.zeros((1, *env.observation_space.shape), np.uint8)).shape[1:]  # of a preprocessed frame
    space = gym.spaces.Box(0, 255, shape, np.uint8)
    env = gym.wrappers.TransformObservation(env, lambda frame: preprocess(args, frame[None])[0], space)
    return gym.wrappers.FrameStackObservation(env, args.frame_stack)  # oldest first, the first frame repeated at reset


class CarRacingEnvPool:
    """EnvPool's batched env as a SAME_STEP vector env with make_carracing_env's wrappers (EnvPool's own is NEXT_STEP)."""

    def __init__(self, args, num_envs):
        import envpool

        kwargs = {"max_episode_steps": args.max_episode_steps} if args.max_episode_steps else {}
        kwargs |= {"num_envs": num_envs, "num_threads": min(num_envs, len(os.sched_getaffinity(0)))}  # the usable cores
        self.make = lambda seeds: envpool.make(args.env_id, "gymnasium", env_seed=seeds, **kwargs)
        self.args, self.num_envs, self.pool = args, num_envs, None

    def reset(self, seed):
        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else seed  # as gymnasium seeds envs
        self.close()  # EnvPool seeds its envs when it makes a pool (its reset takes no seed): a new pool
        self.pool = self.make([s & 0x7FFFFFFF for s in seeds])  # EnvPool's seeds are int32
        self.raw = self.pool.reset()[0]  # the latest frame of each env (EnvPool answers in the order of the env ids asked)
        self.stack = np.repeat(preprocess(self.args, self.raw)[:, None], self.args.frame_stack, axis=1)  # as gymnasium's
        self.negative_steps = np.zeros(self.num_envs)  # consecutive steps of negative reward, as FrameSkip counts them
        return self.stack.copy(), {}

    def step(self, actions):
        N = self.num_envs
        reward, terminated, truncated, live = np.zeros(N), np.zeros(N, bool), np.zeros(N, bool), np.arange(N, dtype=np.int32)
        for _ in range(self.args.frame_skip):  # FrameSkip on the batch: an env that ends stops there
            raw, r, term, trunc, _ = self.pool.step(actions[live], live)
            self.raw[live], reward[live], terminated[live], truncated[live] = raw, reward[live] + r, term, trunc
            live = live[~(term | trunc)]
            if not len(live):
                break
        self.negative_steps = np.where(reward < 0, self.negative_steps + 1, 0)
        truncated |= self.negative_steps >= (self.args.max_negative_steps or math.inf)
        self.stack = np.concatenate([self.stack[:, 1:], preprocess(self.args, self.raw)[:, None]], axis=1)
        done, info = np.flatnonzero(terminated | truncated), {}
        if len(done):
            info["final_obs"] = self.stack.copy()
            self.stack[done] = preprocess(self.args, self.pool.reset(done)[0])[:, None]
            self.negative_steps[done] = 0
        return self.stack.copy(), reward, terminated, truncated, info

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool = None


class LiveMembers:
    """Plain gymnasium envs behind the vector env calls we use, stepping only the members whose episode still runs."""

    def __init__(self, env_fns):
        self.envs = [fn() for fn in env_fns]

    def reset(self, seed):
        self.live = np.ones(len(self.envs), bool)
        self.obs = np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, seed)])
        return self.obs, {}

    def step(self, actions):
        n = len(self.envs)
        reward, terminated, truncated = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        for m in np.flatnonzero(self.live):
            self.obs[m], reward[m], terminated[m], truncated[m], _ = self.envs[m].step(actions[m])
        self.live &= ~(terminated | truncated)
        return self.obs, reward, terminated, truncated, {}

    def close(self):
        for env in self.envs:
            env.close()


def make_carracing_members(args):
    """grpo_continuous.py's members with frames: each runs one episode an iteration; once it has ended it is masked."""
    num_members = args.num_groups * args.group_size
    if args.env_backend == "envpool":
        return CarRacingEnvPool(args, num_members)
    env_fns = [lambda: make_carracing_env(args)] * num_members
    if args.vector_mode == "sync":  # a masked vector env would step the members that have ended
        return LiveMembers(env_fns)
    return gym.vector.AsyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, copy=False)


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def mlp(in_dim, hidden_sizes, out_dim, out_std):
    layers, last = [], in_dim
    for size in hidden_sizes:
        layers += [layer_init(nn.Linear(last, size)), nn.Tanh()]
        last = size
    return nn.Sequential(*layers, layer_init(nn.Linear(last, out_dim), std=out_std))


class CNNFeatureExtractor(nn.Module):
    """uint8 frames (B, stack, H, W, C), scaled to [0, 1] here, -> features: convolutions and a linear layer, with ReLU."""

    def __init__(self, obs_shape, channels, kernel_sizes, strides, feature_size):
        super().__init__()
        layers, last = [], obs_shape[0] * obs_shape[3]
        for out, kernel, stride in zip(channels, kernel_sizes, strides):
            layers += [layer_init(nn.Conv2d(last, out, kernel, stride)), nn.ReLU()]
            last = out
        # channels-last (NHWC) weights and input: oneDNN's CPU convolutions and their backward run ~1/3 faster than in NCHW
        self.convs = nn.Sequential(*layers, nn.Flatten()).to(memory_format=torch.channels_last)
        flat = self.convs(torch.zeros(1, obs_shape[0] * obs_shape[3], *obs_shape[1:3])).shape[1]
        self.fc = nn.Sequential(layer_init(nn.Linear(flat, feature_size)), nn.ReLU())

    def forward(self, obs):
        B, S, H, W, C = obs.shape  # -> (B, S * C, H, W), channel s * C + c, as an NHWC view of the bytes
        x = obs.permute(0, 2, 3, 1, 4).reshape(B, H, W, S * C).permute(0, 3, 1, 2).float() / 255.0
        return self.fc(self.convs(x))


BETA_EPS = 1e-6  # samples are kept this far from 0 and 1, where float32 rounding would make log x or log(1 - x) infinite


def beta_dist(out):
    """The actor's 2 * act_dim outputs -> Beta(alpha, beta), alpha and beta = 1 + softplus > 1: unimodal (Chou et al.)."""
    alpha, beta = (1.0 + nn.functional.softplus(out)).chunk(2, dim=-1)
    return Beta(alpha, beta, validate_args=False)


class Agent(nn.Module):
    """The policy alone: GRPO has no critic."""

    def __init__(self, obs_shape, act_dim, args):
        super().__init__()
        cnn = (obs_shape, args.cnn_channels, args.cnn_kernel_sizes, args.cnn_strides, args.cnn_feature_size)
        self.actor_trunk = CNNFeatureExtractor(*cnn)
        self.actor = mlp(args.cnn_feature_size, args.hidden_sizes, 2 * act_dim, out_std=0.01)

    def dist(self, obs):
        return beta_dist(self.actor(self.actor_trunk(obs)))

    def sample(self, obs):
        return self.dist(obs).sample().clamp(BETA_EPS, 1.0 - BETA_EPS)


def env_action(x, low, high):
    """A sample x in (0, 1) -> the env's action in [low, high]. The log-prob is that of x: the map's Jacobian is a
    constant, which cancels in the PPO ratio."""
    return low + (high - low) * x


def group_seeds(seed, iteration, num_groups):
    """The reset seed of each group of an iteration: a function of (seed, iteration, group) only, so a resumed run replays
    the start states of the uninterrupted one."""
    return [int(np.random.SeedSequence([seed, iteration, g]).generate_state(1)[0]) for g in range(num_groups)]


def group_advantages(rewards, mask, group_size, adv_mode, gamma, adv_norm="group", eps=1e-8):
    """Group-relative advantages of a (T, M) rollout, member m in group m // group_size; mask[t, m] = 1 while m's episode
    runs. The values: `episode`, R_m, m's undiscounted return, at every t; `step`, G_t^m, m's discounted reward-to-go from
    t (0 once m has ended). A = value - its group's mean (at the same t), divided by the group's std (`group`,
    DeepSeekMath), by nothing (`mean`, Dr. GRPO, arXiv 2503.20783) or by the std of all the groups' values (`batch`).
    Population stds plus eps: equal values give 0, not NaN. Returns (T, M) float32, zero where mask is 0."""
    T, M = rewards.shape
    rewards = rewards.double() * mask
    if adv_mode == "episode":
        values = rewards.sum(0).expand(T, M)
    else:
        values, running = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
        for t in reversed(range(T)):
            running = values[t] = rewards[t] + gamma * running  # 0 after the end: rewards are masked
    grouped = values.reshape(T, M // group_size, group_size)
    centered = grouped - grouped.mean(-1, keepdim=True)
    if adv_norm == "group":
        centered = centered / (grouped.std(-1, correction=0, keepdim=True) + eps)
    elif adv_norm == "batch":  # every (t, member) of a group that still runs at t, as the group statistics count them
        running = mask.reshape(grouped.shape).amax(-1, keepdim=True).expand_as(grouped) > 0
        centered = centered / (grouped[running].std(correction=0) + eps)
    return (centered.reshape(T, M) * mask).float()


def k3_kl(logprob, ref_logprob):
    """Unbiased, always >= 0 estimate of KL(pi_theta || pi_ref) from actions sampled by pi_theta: r - log r - 1 with
    r = pi_ref / pi_theta (DeepSeekMath eq. 4). log r is clamped to +-20 so one far-off sample cannot overflow exp."""
    log_r = (ref_logprob - logprob).clamp(-20.0, 20.0)
    return torch.exp(log_r) - log_r - 1.0


LOSS_STATS = [f"losses/{k}" for k in ("approx_kl", "old_approx_kl", "clipfrac", "policy_loss", "kl_ref", "entropy")]


def grpo_loss(agent, obs, actions, logprobs, ref_logprobs, advantages, args):
    """The GRPO loss of a minibatch: the clipped surrogate of the group advantages, plus kl_coef times the k3 KL to the
    reference policy, minus ent_coef times the entropy; and its statistics (LOSS_STATS) as one tensor."""
    dist = agent.dist(obs)
    newlogprob = dist.log_prob(actions).sum(-1)
    logratio = newlogprob - logprobs
    ratio = logratio.exp()
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
    kl_ref = k3_kl(newlogprob, ref_logprobs).mean()
    entropy = dist.entropy().sum(-1).mean()
    with torch.no_grad():  # http://joschu.net/blog/kl-approx.html
        kls = ((ratio - 1) - logratio).mean(), (-logratio).mean()
        stats = torch.stack([*kls, ((ratio - 1).abs() > args.clip_coef).float().mean(), pg_loss, kl_ref, entropy])
    return pg_loss + args.kl_coef * kl_ref - args.ent_coef * entropy, stats


def make_update_step(agent, optimizer, loss_fn, args):
    """One minibatch step: the loss, backward, global gradient clipping, Adam. --compile compiles the loss (AOTAutograd
    compiles its backward too) and the clipped Adam step, as two graphs: backward() and zero_grad() break a graph."""

    def optimizer_step():
        nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm, foreach=True)
        optimizer.step()

    if args.compile:
        loss_fn, optimizer_step = torch.compile(loss_fn), torch.compile(optimizer_step)

    def update_step(*minibatch):
        optimizer.zero_grad(set_to_none=True)
        loss, stats = loss_fn(agent, *minibatch, args)
        loss.backward()
        optimizer_step()
        return stats

    return update_step


def grpo_update(update_step, batch, args):
    """`update_epochs` passes of minibatch SGD over the batch (tensors in update_step's argument order); mean LOSS_STATS."""
    first, stats = next(iter(batch.values())), []
    for _ in range(args.update_epochs):
        perm = torch.randperm(len(first), device=first.device)
        shuffled = [v[perm] for v in batch.values()]  # one gather per epoch; the minibatches are then views
        for start in range(0, len(first), args.minibatch_size):
            stats.append(update_step(*(v[start : start + args.minibatch_size] for v in shuffled)))
        if args.target_kl is not None and stats[-1][0] > args.target_kl:  # approx_kl of the epoch's last minibatch
            break
    return dict(zip(LOSS_STATS, torch.stack(stats).mean(0).tolist()))


def collect_rollout(members, policy, seeds, group_size, low, high, on_episode, max_steps):
    """grpo_continuous.py's collect_group_rollouts on uint8 frames, not normalized (group g resets with seeds[g]: on
    CarRacing, one track). Returns the (T, M) tensors obs, actions, mask and rewards, and the policy and env seconds."""
    M = len(seeds) * group_size
    obs, _ = members.reset(seed=[seeds[m // group_size] for m in range(M)])
    alive, episode_return, x = np.ones(M, bool), np.zeros(M), obs.copy()
    buf, steps = {"obs": [], "actions": [], "mask": [], "rewards": []}, 0
    timings = {"policy_forward_s": 0.0, "env_step_s": 0.0}
    while alive.any() and steps < max_steps:
        live = np.flatnonzero(alive)
        x[live] = obs[live]
        t0 = time.perf_counter()
        action = policy(torch.from_numpy(x)).numpy()
        timings["policy_forward_s"] += time.perf_counter() - t0
        for key, value in (("obs", x.copy()), ("actions", action), ("mask", alive.astype(np.float32))):
            buf[key].append(value)
        t0 = time.perf_counter()
        obs, reward, terminated, truncated, _ = members.step(env_action(action, low, high))
        timings["env_step_s"] += time.perf_counter() - t0
        reward = np.where(alive, reward, 0.0)
        episode_return += reward
        buf["rewards"].append(reward.astype(np.float32))
        for k in np.flatnonzero((terminated | truncated)[live]):
            alive[live[k]] = False
            on_episode(steps + k + 1, episode_return[live[k]], len(buf["mask"]))
        steps += len(live)
    return {k: torch.from_numpy(np.stack(v)) for k, v in buf.items()}, timings


def make_batch(agent, ref_agent, rollout, args, device, chunk=1024):
    """grpo_continuous.py's make_group_batch, log-probs `chunk` frames at a time (a whole rollout would hold gigabytes)."""
    valid = rollout["mask"].view(-1) > 0
    advantages = group_advantages(
        rollout["rewards"], rollout["mask"], args.group_size, args.adv_mode, args.gamma, args.adv_norm
    )
    obs, actions = (rollout[k].flatten(0, 1)[valid].to(device) for k in ("obs", "actions"))
    with torch.no_grad():
        logprobs, ref_logprobs = (
            torch.cat([a.dist(o).log_prob(x).sum(-1) for o, x in zip(obs.split(chunk), actions.split(chunk))])
            for a in (agent, ref_agent)
        )
    batch = {"obs": obs, "actions": actions, "logprobs": logprobs, "ref_logprobs": ref_logprobs}
    return batch | {"advantages": advantages.view(-1)[valid].to(device)}


def main(args: Args):
    check_args(args)
    obs_shape, act_space = check_env(args)
    run_dir, ckpt, init = open_run(args)
    # -- nothing has been written before this line --
    run = Run(args, run_dir, ckpt, init, total_steps=args.total_timesteps, group_size=args.group_size)
    random.seed(args.seed)  # a resume restores torch's generator from the checkpoint (run.restore)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    low, high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)
    agent = Agent(obs_shape, act_space.shape[0], args).to(device)
    ref_agent = copy.deepcopy(agent).requires_grad_(False)
    # fused Adam: one kernel for all parameters; a tensor learning rate: annealing it does not recompile --compile's step
    optimizer = torch.optim.Adam(agent.parameters(), lr=torch.tensor(args.learning_rate, device=device), eps=1e-5, fused=True)
    run.restore(agent=agent, optimizer=optimizer, ref_agent=ref_agent)

    def sample(obs):  # the rollout's policy call
        return agent.sample(obs.to(device)).cpu()

    def act_deterministic(obs):  # the evaluation policy: the mean of the Beta
        with torch.inference_mode():
            return env_action(agent.dist(torch.from_numpy(obs).to(device)).mean.cpu().numpy(), low, high)

    make_eval_env = partial(make_carracing_env, args)  # render_mode -> an env with the training wrappers

    def on_episode(steps, episodic_return, length):  # an episode ended `steps` env steps into the rollout
        run.episode(global_step + steps, episodic_return, length)

    if args.eval_checkpoint:  # evaluate the saved policy; no training
        return run.evaluate(make_eval_env, act_deterministic)

    policy = torch.compile(sample) if args.compile and device.type == "cuda" else sample  # on a CPU it does not pay
    update_step = make_update_step(agent, optimizer, grpo_loss, args)
    members = make_carracing_members(args)

    global_step, iteration = run.global_step, run.iteration
    while global_step < args.total_timesteps:
        iteration += 1
        t_iter = time.perf_counter()
        progress = global_step / args.total_timesteps  # of the run, for --lr-schedule
        decay = {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 + 0.5 * math.cos(math.pi * progress)}
        optimizer.param_groups[0]["lr"].fill_(decay[args.lr_schedule] * args.learning_rate)
        if args.ref_update_every and (iteration - 1) % args.ref_update_every == 0:
            ref_agent.load_state_dict(agent.state_dict())
        seeds = group_seeds(args.seed, iteration, args.num_groups)
        with torch.inference_mode():
            rollout, timings = collect_rollout(
                members, policy, seeds, args.group_size, low, high, on_episode, args.total_timesteps - global_step
            )
        timings["rollout_s"] = time.perf_counter() - t_iter
        num_steps = int(rollout["mask"].sum())
        global_step += num_steps
        batch = make_batch(agent, ref_agent, rollout, args, device)
        stats = grpo_update(update_step, batch, args)
        returns, adv = rollout["rewards"].sum(0).view(args.num_groups, args.group_size), batch["advantages"]
        stats["charts/group_return_mean"] = returns.mean().item()
        stats["charts/group_return_std"] = returns.std(1, correction=0).mean().item()  # within a group, over the groups
        stats["charts/batch_steps"] = num_steps
        stats["losses/advantage_mean"], stats["losses/advantage_std"] = adv.mean().item(), adv.std().item()
        stats["losses/advantage_abs_max"] = adv.abs().max().item()
        timings["update_s"] = time.perf_counter() - t_iter - timings["rollout_s"]
        run.end_iteration(iteration, global_step, stats, timings, make_eval_env, act_deterministic)
    members.close()
    run.close()


def check_env(args):
    """Make one env to check its spaces, and the CNN on its frames, before anything is written; (obs shape, act space)."""
    with warnings.catch_warnings(action="ignore"):  # gymnasium's v4 deprecation warning would precede a one-line error
        try:
            env = gym.make(args.env_id)
        except Exception as e:  # unknown id, a missing dependency, a broken env
            raise UsageError(f"cannot make env {args.env_id!r} ({str(e).splitlines()[0]}): pass a registered --env-id")
    obs_space, act_space, spec = env.observation_space, env.action_space, env.spec
    env.close()
    if not isinstance(act_space, gym.spaces.Box):
        raise UsageError(f"{args.env_id} has {type(act_space).__name__} actions; this script needs continuous (Box) ones")
    if args.max_episode_steps is None and (spec is None or spec.max_episode_steps is None):  # evaluation (and GRPO)
        raise UsageError(f"{args.env_id} has no time limit and episodes are run to their end: pass --max-episode-steps")
    if not (np.isfinite(act_space.low).all() and np.isfinite(act_space.high).all()):
        raise UsageError(f"{args.env_id} has unbounded actions; a Beta policy needs finite bounds")
    shape = getattr(obs_space, "shape", obs_space)
    if not (isinstance(obs_space, gym.spaces.Box) and len(shape) == 3 and shape[2] == 3 and obs_space.dtype == np.uint8):
        raise UsageError(f"{args.env_id} has observations of shape {shape}; this CNN script needs (H, W, 3) uint8 images")
    if args.env_backend == "envpool":
        check_envpool_env(args, obs_space, act_space)
    obs_shape = make_carracing_env(args).observation_space.shape  # (frame_stack, height, width, channels)
    try:  # the convolutions' output size, as the network computes it
        CNNFeatureExtractor(obs_shape, args.cnn_channels, args.cnn_kernel_sizes, args.cnn_strides, 1)
    except RuntimeError:
        raise UsageError(f"--cnn-kernel-sizes and --cnn-strides shrink a {obs_shape[1]}x{obs_shape[2]} frame to nothing")
    return obs_shape, act_space


def check_envpool_env(args, obs_space, act_space):
    """The EnvPool env must exist and look like gymnasium's (the evaluation env) to the policy."""
    try:
        import envpool
    except ImportError:
        raise UsageError("--env-backend envpool needs EnvPool, which is not installed: pip install envpool (Linux x86_64)")
    if args.env_id not in envpool.list_all_envs():
        raise UsageError(f"EnvPool has no env {args.env_id!r}: use --env-backend gymnasium")
    with warnings.catch_warnings(action="ignore"):
        spec = envpool.make_spec(args.env_id)
        ep_obs, ep_act = spec.observation_space, spec.action_space  # gymnasium warns of their dtypes here
    same = (ep_obs.shape, ep_obs.dtype, ep_act.shape) == (obs_space.shape, obs_space.dtype, act_space.shape)
    if not (same and np.allclose(ep_act.low, act_space.low) and np.allclose(ep_act.high, act_space.high)):
        raise UsageError(f"EnvPool's {args.env_id} differs from gymnasium's ({ep_obs}, {ep_act}): use --env-backend gymnasium")


def check_common_args(args, positive=(), non_negative=()):
    """The arguments both CNN scripts take, and a script's own `positive` and `non_negative` ones."""
    if not args.exp_name or "/" in args.exp_name or os.sep in args.exp_name:
        raise UsageError(f"--exp-name must be a non-empty name without path separators, got {args.exp_name!r}")
    positive += ("eval_episodes", "learning_rate", "clip_coef", "max_grad_norm")
    for name in positive + ("frame_skip", "frame_stack", "cnn_feature_size", "total_timesteps", "update_epochs"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in non_negative + ("eval_every", "checkpoint_every", "torch_threads", "ent_coef"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("max_episode_steps", "max_negative_steps", "target_kl"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive (or None), got {getattr(args, name)}")
    if args.resize is not None and min(args.resize) <= 0:
        raise UsageError(f"--resize needs a positive height and width, got {args.resize}")
    cnn = (args.cnn_channels, args.cnn_kernel_sizes, args.cnn_strides)
    if not args.cnn_channels or len(set(map(len, cnn))) != 1 or min(min(c) for c in cnn) <= 0:
        raise UsageError(f"--cnn-channels/-kernel-sizes/-strides need one positive entry per convolution each, got {cnn}")
    if not args.hidden_sizes or min(args.hidden_sizes) <= 0:
        raise UsageError(f"every --hidden-sizes entry must be positive, got {args.hidden_sizes}")


def check_args(args):
    """Every argument a user can get wrong, checked before anything is written; fills in the default --exp-name."""
    if args.exp_name is None:
        args.exp_name = f"{ALGO}_g{args.group_size}"
    check_common_args(args, positive=("num_groups", "minibatch_size"), non_negative=("ref_update_every", "kl_coef"))
    if args.group_size < 2:
        raise UsageError(f"--group-size must be at least 2 (a group compares its trajectories), got {args.group_size}")
    if not 0 < args.gamma <= 1:
        raise UsageError(f"--gamma must be in (0, 1], got {args.gamma}")


# ==== plumbing: begin (the same text in every training script; tests/test_plumbing.py) ====
ALGO = Path(__file__).stem
CHECKPOINT_FORMAT = 2  # raised when what a checkpoint holds changes: an older file is refused, never misread
# arguments that change how a run computes, not what: a resume may change them
RESUME_MAY_DIFFER = ("resume", "runs_dir", "cuda", "compile", "torch_threads", "vector_mode", "capture_video", "track")
EVAL_OWN = ("eval_checkpoint", "video_path", "eval_episodes", "env_backend")  # an evaluation's own (on gymnasium's env)
INIT_SOURCES = {"grpo_continuous": "ppo_continuous", "grpo_cnn_carracing": "ppo_cnn_carracing"}  # GRPO after PPO
# what the policy sees and is: --init-from needs a checkpoint with the same values (of those a script has)
INIT_SAME = ("env_id", "norm_obs", "clip_obs", "frame_skip", "grayscale", "resize", "frame_stack", "hidden_sizes")
INIT_SAME += ("cnn_channels", "cnn_kernel_sizes", "cnn_strides", "cnn_feature_size", "shared_trunk")


class UsageError(Exception):
    """A mistake the user can fix; reported as one line, exit status 2, nothing written."""


def atomic_write(path, write):
    """write(temporary path), then rename: a reader, or a kill -9, never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def load_checkpoint(path, algos=(ALGO,), fix="pass a run's checkpoints/latest.pt or best.pt"):
    """weights_only: a checkpoint is tensors and plain containers, so reading one never runs code from the file."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated, foreign, or a pickle that would run code
        raise UsageError(f"cannot read checkpoint {path} ({type(e).__name__}): {fix}")
    if not isinstance(ckpt, dict) or ckpt.get("algo") not in algos or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = f"{ckpt.get('algo')}.py's, format {ckpt.get('format')}" if isinstance(ckpt, dict) else type(ckpt).__name__
        scripts = " or ".join(f"{algo}.py" for algo in algos)
        raise UsageError(f"{path} ({found}) is not a checkpoint of this version of {scripts}: use the script that wrote it")
    return ckpt


def run_name(args):
    """A run directory's name, from its arguments (a dict)."""
    return f"{args['env_id'].replace('/', '-')}__{args['exp_name']}__seed{args['seed']}"


def load_init(args):
    """The --init-from checkpoint, if it fits: this script's or its PPO sibling's, of the same env and networks."""
    init = load_checkpoint(args.init_from, tuple(filter(None, (ALGO, INIT_SOURCES.get(ALGO)))))
    saved, now = init["args"], asdict(args)
    differ = [k for k in INIT_SAME if k in saved and k in now and json.dumps(saved[k]) != json.dumps(now[k])]
    if differ:
        trained = ", ".join(f"--{k.replace('_', '-')} {saved[k]!r}" for k in differ)
        raise UsageError(f"--init-from {args.init_from} was trained with {trained}: pass the same to start from it")
    return init


def open_run(args):
    """Fresh run, resume or evaluation, decided before anything is written. Returns (run_dir, checkpoint or None, the
    --init-from checkpoint of a fresh run or None)."""
    if args.eval_checkpoint:
        return Path(args.eval_checkpoint).parent, load_checkpoint(args.eval_checkpoint), None
    run_dir = Path(args.runs_dir) / run_name(asdict(args))
    latest = run_dir / "checkpoints" / "latest.pt"
    if not args.resume and run_dir.exists():
        raise UsageError(f"{run_dir} exists: pass --resume to continue it, or another --exp-name/--seed/--runs-dir")
    if not args.resume or not latest.exists():
        return run_dir, None, load_init(args) if args.init_from else None
    ckpt = load_checkpoint(latest, fix="delete it to restart the run from step 0")
    saved, now = ckpt["args"], asdict(args)
    default = {f.name: f.default for f in fields(args)}  # a flag newer than the run: the run had its default
    changed = [
        f"--{k.replace('_', '-')} {saved.get(k, default[k])!r} -> {now[k]!r}"
        for k in now
        if k not in RESUME_MAY_DIFFER and saved.get(k, default[k]) != now[k]
    ]
    if changed:
        raise UsageError(f"--resume with other arguments ({'; '.join(changed)}); use the original ones or a new --exp-name")
    if ckpt["metrics"]["completed"]:  # said on stdout: benchmark.sh counts the run as skipped
        print(f"{run_dir} is already complete ({ckpt['metrics']['global_step']:,} steps); nothing to do")
        sys.exit(0)
    return run_dir, ckpt, None


class Run:
    """Everything a run writes: metrics.json, timings.jsonl, logs/train.log, TensorBoard, checkpoints, videos. A resume
    rewinds all of them to the checkpoint, so curves have no gap and no duplicate."""

    def __init__(self, args, run_dir, ckpt, init, total_steps, group_size=None):
        self.args, self.dir, self.ckpt, self.init, self.total_steps = args, run_dir, ckpt, init, total_steps
        self.iteration = ckpt["iteration"] if ckpt else 0
        run = {"env_id": args.env_id, "algo": ALGO, "exp_name": args.exp_name, "seed": args.seed, "group_size": group_size}
        run["init_from"] = None
        if init:  # where a fine-tuning run started (plot.py reads it) and the loaded policy's last evaluation
            source = {k: init["metrics"][k] for k in ("env_id", "algo", "exp_name", "seed", "wall_time_s")}
            run["init_from"] = {"path": args.init_from, "run": run_name(source), **source, "global_step": init["global_step"]}
            run["init_from"]["eval_return"] = (init["metrics"]["eval"]["mean_return"] or [None])[-1]
        progress = {"status": "running", "completed": False, "global_step": 0, "total_timesteps": args.total_timesteps}
        curves = {"train": {"global_step": [], "episodic_return": [], "episodic_length": []}, "eval": {}}
        curves["eval"] = {"global_step": [], "mean_return": [], "std_return": []}
        new = {**run, "args": asdict(args), **progress, "sps": 0.0, "wall_time_s": 0.0, "best_eval_return": None, **curves}
        self.metrics, self.wandb, self.ckpt_s = ckpt["metrics"] if ckpt else new, None, 0.0
        self.global_step = self.last_ckpt_step = self.metrics["global_step"]
        self.log = logging.getLogger(f"{ALGO}.{run_dir}")
        if args.eval_checkpoint:  # an evaluation writes nothing in the run directory
            return
        for sub in ("logs", "checkpoints", "videos"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        for stale in run_dir.rglob("*.tmp*"):  # left by a kill -9 in the middle of an atomic write
            stale.unlink()
        kept, timings = [], run_dir / "timings.jsonl"
        for line in timings.read_text().splitlines() if ckpt and timings.exists() else []:
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by kill -9 is dropped
                kept += [line + "\n"] if json.loads(line)["iteration"] <= self.iteration else []
        for old in [] if ckpt else run_dir.glob("events.out.tfevents.*"):  # fresh start: no stale curves
            old.unlink()
        atomic_write(timings, lambda tmp: Path(tmp).write_text("".join(kept)))
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(run_dir / "logs" / "train.log")):
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            self.log.addHandler(handler)
        if args.track:  # before the SummaryWriter, whose scalars wandb mirrors; a resume continues the same W&B run
            import wandb

            self.wandb, wandb_id = wandb, self.metrics.setdefault("wandb_id", os.urandom(4).hex())
            try:
                where = {"project": args.wandb_project_name, "entity": args.wandb_entity, "name": run_dir.name, "dir": run_dir}
                wandb.init(id=wandb_id, resume="allow", config=asdict(args), sync_tensorboard=True, **where)
            except Exception as e:  # not logged in, no network: nothing trained yet, so the same command with --resume
                raise UsageError(f"--track: W&B did not start ({e}); `wandb login` or WANDB_MODE=offline, then --resume")
        self.writer = SummaryWriter(str(run_dir), purge_step=self.metrics["global_step"] + 1 if ckpt else None)
        self.t_start, self.wall_time_before = time.perf_counter(), self.metrics["wall_time_s"]
        self.flush()

    def restore(self, **state):
        """Keeps `state` (objects with state_dict/load_state_dict) for the checkpoints; loads it from one if there is one."""
        self.state, device = state, next(state["agent"].parameters()).device
        on = f"on {device}" + (" (--cuda: CUDA is not available)" if self.args.cuda and device.type == "cpu" else "")
        if self.init and not self.ckpt:
            self.start_from(self.init)
        if not self.ckpt:
            return self.log.info(f"run directory {self.dir}; {self.total_steps:,} steps {on}")
        try:
            for k, v in state.items():
                v.load_state_dict(self.ckpt[k])
        except RuntimeError:  # a size mismatch: the networks of another env's spaces or other arguments
            raise UsageError(f"a checkpoint of {self.ckpt['args']['env_id']} does not fit {self.args.env_id} as configured")
        torch.set_rng_state(self.ckpt["rng"]["torch"])
        if self.ckpt["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.ckpt["rng"]["cuda"])
        self.log.info(f"resuming {self.dir} from step {self.global_step:,} (iteration {self.iteration}) {on}")

    def start_from(self, init):
        """--init-from: the loaded run's networks and observation statistics; the optimizer, step count, schedules, RNG
        and reward statistics start fresh, as with rl-zoo3's --trained-agent."""
        agent = self.state["agent"]
        own = agent.state_dict().keys()  # a PPO checkpoint's critic stays behind in GRPO, which has none
        try:
            agent.load_state_dict({k: v for k, v in init["agent"].items() if k in own})
        except RuntimeError:  # checked arguments, so a checkpoint written by other code
            raise UsageError(f"the networks in --init-from {self.args.init_from} do not fit this script's")
        if "obs_norm" in self.state:
            self.state["obs_norm"].load_state_dict(init["obs_norm"])
        if "ref_agent" in self.state:  # GRPO's reference policy starts as the loaded policy
            self.state["ref_agent"].load_state_dict(agent.state_dict())
        self.log.info(f"starting from {self.args.init_from} ({init['algo']}.py, step {init['global_step']:,})")

    def save(self, name):
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        ckpt = {"algo": ALGO, "format": CHECKPOINT_FORMAT, "args": asdict(self.args), "metrics": self.metrics, "rng": rng}
        ckpt |= {"iteration": self.iteration, "global_step": self.global_step}
        ckpt |= {k: v.state_dict() for k, v in self.state.items()}
        atomic_write(self.dir / "checkpoints" / name, lambda tmp: torch.save(ckpt, tmp))

    def episode(self, global_step, episodic_return, episodic_length):
        for key, value in zip(self.metrics["train"], (int(global_step), float(episodic_return), int(episodic_length))):
            self.metrics["train"][key].append(value)
        self.writer.add_scalar("charts/episodic_return", episodic_return, global_step)
        self.writer.add_scalar("charts/episodic_length", episodic_length, global_step)

    def end_iteration(self, iteration, global_step, stats, timings, make_eval_env, act):
        """The NaN stop, evaluation and checkpoint when due, metrics.json, TensorBoard, the log, timings.jsonl's row."""
        steps, self.iteration, self.global_step, args = global_step - self.global_step, iteration, global_step, self.args
        t_eval = time.perf_counter()
        params = torch.cat([p.detach().reshape(-1) for p in self.state["agent"].parameters()])
        if not (all(math.isfinite(v) for v in stats.values()) and bool(params.isfinite().all())):
            self.metrics["status"] = "diverged"
            error = f"training diverged (NaN/inf) at step {global_step:,}; latest.pt holds step {self.last_ckpt_step:,}"
            self.log.error(error)
            self.close()
            raise FloatingPointError(f"{error}: lower --learning-rate or --max-grad-norm")
        final, eval_return = global_step >= self.total_steps, None
        last_eval_step = (self.metrics["eval"]["global_step"] or [0])[-1]
        if args.eval_every and (global_step - last_eval_step >= args.eval_every or final):
            eval_return = self.evaluate(make_eval_env, act)
        t_io = time.perf_counter()
        m = self.metrics
        m["global_step"], m["wall_time_s"] = global_step, self.wall_time_before + t_io - self.t_start
        m["sps"] = sps = global_step / m["wall_time_s"]
        lr = float(self.state["optimizer"].param_groups[0]["lr"])
        for tag, value in {**stats, "charts/learning_rate": lr, "charts/SPS": sps}.items():
            self.writer.add_scalar(tag, value, global_step)
        if final:
            m["completed"], m["status"] = True, "completed"
        self.flush()
        timings["eval_s"] = t_io - t_eval
        timings["io_s"] = time.perf_counter() - t_io + self.ckpt_s
        time_s = timings["rollout_s"] + timings["update_s"] + timings["eval_s"] + timings["io_s"]  # phases in sequence
        row = {"iteration": iteration, "global_step": global_step, "time_s": time_s, "sps": steps / time_s}
        with open(self.dir / "timings.jsonl", "a") as f:  # a kill -9 can cut only this line, which a resume drops
            f.write(json.dumps(row | timings) + "\n")
        t_ckpt = time.perf_counter()
        if final or (args.checkpoint_every and global_step - self.last_ckpt_step >= args.checkpoint_every):
            self.last_ckpt_step = global_step
            self.save("latest.pt")  # last: a checkpoint never runs ahead of the records a kill -9 could lose
        self.ckpt_s = time.perf_counter() - t_ckpt  # the next row's io_s counts it
        rets, eta = m["train"]["episodic_return"][-10:], max(self.total_steps - global_step, 0) / max(sps, 1e-9)
        self.log.info(
            f"step {global_step:,}/{self.total_steps:,} ({100 * global_step / self.total_steps:.0f}%) | SPS {sps:,.0f}"
            + (f" | return {np.mean(rets):,.1f} (last {len(rets)} episodes)" if rets else "")
            + (f" | eval {eval_return:,.1f}" if eval_return is not None else "")
            + f" | ETA {int(eta // 3600)}h{int(eta % 3600 // 60):02d}m{int(eta % 60):02d}s"
        )

    def evaluate(self, make_eval_env, act):
        """Deterministic episodes on fixed seeds; keeps the best policy (best.pt) and films the best episode."""
        args, seeds = self.args, [1_000_000 * (1 + self.args.seed) + k for k in range(self.args.eval_episodes)]
        with make_eval_env(None) as env:
            returns = np.array([run_episode(env, act, seed) for seed in seeds])
        mean, std = float(returns.mean()), float(returns.std())
        if args.eval_checkpoint:  # print, film next to the checkpoint (or to --video-path), nothing else
            print(f"{args.eval_checkpoint} on {args.env_id}: return {mean:.2f} +- {std:.2f} over {len(seeds)} episodes")
            video = Path(args.video_path or Path(args.eval_checkpoint).with_suffix(".mp4"))
        else:
            video = self.dir / "videos" / f"eval-step{self.global_step:09d}.mp4"
            for key, value in zip(self.metrics["eval"], (self.global_step, mean, std)):
                self.metrics["eval"][key].append(value)
            self.writer.add_scalar("eval/mean_return", mean, self.global_step)
            self.writer.add_scalar("eval/std_return", std, self.global_step)
            if self.metrics["best_eval_return"] is None or mean > self.metrics["best_eval_return"]:
                self.metrics["best_eval_return"] = mean
                self.save("best.pt")
        if args.capture_video:
            try:
                record_video(make_eval_env, act, seeds[int(returns.argmax())], video)
                if self.wandb:
                    self.wandb.log({"videos/eval": self.wandb.Video(str(video))})
            except Exception as e:  # no renderer here: keep training, say why once
                self.log.warning(f"video capture failed ({type(e).__name__}: {e}); continuing without videos")
                args.capture_video = False
        return mean

    def flush(self):
        atomic_write(self.dir / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(self.metrics, indent=1)))
        self.writer.flush()

    def close(self):
        self.flush()
        self.writer.close()
        if self.wandb:
            self.wandb.finish()
        for handler in list(self.log.handlers):
            handler.close()
            self.log.removeHandler(handler)


def run_episode(env, act, seed, on_frame=None, frame_every=1):
    """One episode of `act` from `env.reset(seed=seed)`: its return. `on_frame` gets every frame_every-th frame."""
    obs, _ = env.reset(seed=seed)
    episodic_return, length, done = 0.0, 0, False
    while not done:
        if on_frame and length % frame_every == 0:
            on_frame(env.render())
        obs, reward, terminated, truncated, _ = env.step(act(obs[None])[0])
        episodic_return, length, done = episodic_return + float(reward), length + 1, terminated or truncated
    return episodic_return


def record_video(make_eval_env, act, seed, path: Path):
    """Film an episode by re-running it from its seed (all is deterministic), at most ~30 frames per simulated second."""
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)  # --video-path may name a new directory
    with make_eval_env("rgb_array") as env:
        env_fps = env.metadata.get("render_fps") or 30
        frame_every = max(1, round(env_fps / 30))
        try:
            with imageio.get_writer(tmp, fps=env_fps / frame_every, macro_block_size=1) as writer:
                run_episode(env, act, seed, on_frame=writer.append_data, frame_every=frame_every)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def cli(main_fn, args_type, default=None):
    """tyro reports a bad flag in a multi-line box, and main's errors are exceptions: each becomes one line on stderr."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = tyro.cli(args_type, default=default)
    except SystemExit as e:
        box = [line.strip("│╭╮╰╯ ") for line in captured.getvalue().splitlines()[1:]]
        body = " ".join(" ".join(itertools.takewhile(lambda line: not line.startswith("─"), box)).split())
        print(f"error: {body or captured.getvalue().strip()} (see --help)" if e.code else captured.getvalue(), file=sys.stderr)
        raise
    sys.stderr.write(captured.getvalue())
    try:
        if args.eval_checkpoint and default is None:  # read again, the run's arguments as defaults: the flags given win
            names, own = {f.name for f in fields(args)}, RESUME_MAY_DIFFER + EVAL_OWN
            saved = {k: v for k, v in load_checkpoint(args.eval_checkpoint)["args"].items() if k in names and k not in own}
            return cli(main_fn, args_type, default=replace(args_type(), **saved))
        main_fn(args)
    except (UsageError, FloatingPointError, OSError) as e:  # training diverged; a --runs-dir that cannot be written
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UsageError) else 1)


# ==== plumbing: end ====


if __name__ == "__main__":
    cli(main, Args)
