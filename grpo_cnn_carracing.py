"""GRPO on pixels: CarRacing from frames, a critic-free policy gradient with same-track groups, in one file.

grpo_continuous.py (Group Relative Policy Optimization, Shao et al., DeepSeekMath, arXiv 2402.03300: groups of G episodes
from one start state, advantages relative to the group by `--adv-mode`, PPO's clipped surrogate plus a k3 KL penalty to a
reference policy; a resumed run replays the uninterrupted one) with pixels.py's frames and ppo_cnn_carracing.py's CNN and
Beta policy, imported from it. CarRacing generates its track from the reset seed, so the members of a group, reset with
one seed, drive the same track. The run itself (its directory, logs, checkpoints, resume, evaluation, the CLI) is
runlib.py's.
"""

import copy
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
from torch.distributions import Beta

import runlib  # the update step, the policy call, where a signal may stop the run
from envlib import LiveMembers, RewardDelay, vector_env
from grpo_continuous import group_advantages, group_seeds, group_stats, k3_kl, kept_groups  # GRPO's math, as on vectors
from pixels import Frames, FramesEnvPool
from policylib import MeanPolicy
from ppo_cnn_carracing import (
    BETA_EPS,
    CNNFeatureExtractor,
    beta_dist,
    check_spaces,
    env_action,
    mlp,
)
from runlib import Run, Timings, UsageError, check_arg_ranges, check_env, cli, lr_factor, setup_torch

ALGO = Path(__file__).stem  # the script's name: a copy of it names its runs and checkpoints after itself


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
    config: Optional[str] = None
    """read arguments from a YAML, TOML or JSON file (keys: the flags' names; a run's metrics.json too); flags given win"""

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
    group_size: int = 8
    """G: the trajectories per group, all from the same start state (at least 2)"""
    num_groups: int = 4
    """the groups per iteration, each from its own start state"""
    adv_mode: Literal["episode", "step"] = "episode"
    """group advantages: `episode` (the normalized episode return at every step) or `step` (normalized reward-to-go)"""
    adv_norm: Literal["group", "mean", "batch"] = "group"
    """advantage scale: the group's std (`group`, DeepSeekMath), none (`mean`, Dr. GRPO) or the batch's std (`batch`)"""
    adv_baseline: Literal["mean", "loo"] = "mean"
    """each member against its group's mean (`mean`, DeepSeekMath) or against the mean of the others (`loo`, RLOO)"""
    drop_equal_groups: bool = False
    """leave out the groups whose returns are all equal, which teach nothing (DAPO's dynamic sampling, not refilled)"""
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
    clip_coef_high: Optional[float] = None
    """the ratio's upper clip is 1 + this (DAPO's clip-higher, e.g. 0.28; None: --clip-coef, symmetric)"""
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
    export: Optional[str] = None
    """with --eval-checkpoint: write its deterministic policy (observations -> actions) as a .pt2 or .onnx file, and exit"""
    track: bool = False
    """if toggled, send the TensorBoard scalars, the arguments and the eval videos to Weights & Biases"""
    wandb_project_name: str = "cleanrl"
    """the W&B project"""
    wandb_entity: Optional[str] = None
    """the W&B entity (team); None: your default"""


def make_env(args: Args, render_mode: Optional[str] = None) -> gym.Env[Any, Any]:
    render: dict[str, Any] = {"render_mode": render_mode} if render_mode else {}  # an env need not take render_mode=None
    env = gym.make(args.env_id, max_episode_steps=args.max_episode_steps, **render)
    return Frames.of(args).wrap(env)


Members = LiveMembers | FramesEnvPool | gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv  # reset: a seed per member


def make_members(args: Args) -> Members:
    """The envs of the num_groups * group_size members, as a vector env. Each runs one episode an iteration, so a member
    that has ended is masked whatever its env does next (EnvPool and AsyncVectorEnv step it on and autoreset it)."""
    num_members = args.num_groups * args.group_size
    if args.env_backend == "envpool":
        return FramesEnvPool(args.env_id, Frames.of(args), num_members, args.max_episode_steps)
    env_fn = partial(make_env, args)
    if args.vector_mode == "sync":  # a masked vector env would step the members that have ended
        return LiveMembers(env_fn, num_members)
    return vector_env(env_fn, num_members, "async")


class Agent(nn.Module):
    """The policy alone: GRPO has no critic."""

    def __init__(self, obs_shape: tuple[int, ...], act_dim: int, args: Args) -> None:
        super().__init__()
        self.actor_trunk = CNNFeatureExtractor(obs_shape, args, args.cnn_feature_size)
        self.actor = mlp(args.cnn_feature_size, args.hidden_sizes, 2 * act_dim, out_std=0.01)

    def dist(self, obs: torch.Tensor) -> Beta:
        return beta_dist(self.actor(self.actor_trunk(obs)))

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        return self.dist(obs).sample().clamp(BETA_EPS, 1.0 - BETA_EPS)


class Batch(NamedTuple):
    """Every valid step of an iteration's groups as flat tensors, (B,) or (B, ...): what grpo_loss reads, by name."""

    obs: torch.Tensor  # uint8 frames
    actions: torch.Tensor  # the Beta samples x in (0, 1)
    logprobs: torch.Tensor  # of the actions under the rollout's policy
    ref_logprobs: torch.Tensor  # of the actions under the reference policy
    advantages: torch.Tensor  # group-relative

    def subset(self, i: torch.Tensor | slice) -> "Batch":
        return Batch(*(v[i] for v in self))


LOSS_STATS = [f"losses/{k}" for k in ("approx_kl", "old_approx_kl", "clipfrac", "policy_loss", "kl_ref", "entropy")]


def grpo_loss(agent: Agent, mb: Batch, args: Args) -> tuple[torch.Tensor, torch.Tensor]:
    """The GRPO loss of a minibatch: the clipped surrogate of the group advantages, plus kl_coef times the k3 KL to the
    reference policy, minus ent_coef times the entropy; and its statistics (LOSS_STATS) as one tensor."""
    dist = agent.dist(mb.obs)
    newlogprob = dist.log_prob(mb.actions).sum(-1)
    logratio = newlogprob - mb.logprobs
    ratio = logratio.exp()
    advantages = mb.advantages
    high = args.clip_coef if args.clip_coef_high is None else args.clip_coef_high
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - args.clip_coef, 1 + high)).mean()
    kl_ref = k3_kl(newlogprob, mb.ref_logprobs).mean()
    entropy = dist.entropy().sum(-1).mean()
    with torch.no_grad():  # http://joschu.net/blog/kl-approx.html
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio < 1 - args.clip_coef) | (ratio > 1 + high)).float().mean()
        stats = torch.stack([approx_kl, (-logratio).mean(), clipfrac, pg_loss, kl_ref, entropy])
    return pg_loss + args.kl_coef * kl_ref - args.ent_coef * entropy, stats


UpdateStep = Callable[[Batch], torch.Tensor]


def grpo_update(update_step: UpdateStep, batch: Batch, args: Args) -> dict[str, float]:
    """`update_epochs` passes of minibatch SGD over the batch; the mean of each LOSS_STATS."""
    stats = []
    if not len(batch.obs):  # every group left out (--drop-equal-groups): nothing to learn from this iteration
        return {}
    for _ in range(args.update_epochs):
        shuffled = batch.subset(torch.randperm(len(batch.obs), device=batch.obs.device))  # then minibatches are views
        for start in range(0, len(batch.obs), args.minibatch_size):
            stats.append(update_step(shuffled.subset(slice(start, start + args.minibatch_size))))
        if args.target_kl is not None and stats[-1][0] > args.target_kl:  # approx_kl of the epoch's last minibatch
            break
    return dict(zip(LOSS_STATS, torch.stack(stats).mean(0).tolist()))


class GroupRollout(NamedTuple):
    """T steps of M members, each running one episode: member m is in group m // group_size; T is the longest episode."""

    obs: torch.Tensor  # (T, M, stack, H, W, C) uint8 frames; a member that has ended repeats its last frames, masked
    actions: torch.Tensor  # (T, M, act_dim) float32: the Beta samples x in (0, 1), not the env's actions
    rewards: torch.Tensor  # (T, M) float32, 0 once the member has ended
    mask: torch.Tensor  # (T, M) float32: 1 while the member's episode runs


def collect_group_rollouts(
    members: Members,
    policy: Callable[[torch.Tensor], torch.Tensor],
    seeds: list[int],
    group_size: int,
    low: torch.Tensor,
    high: torch.Tensor,
    on_episode: Callable[[int, float, int], None],
    max_steps: int,
    timings: Timings,
) -> GroupRollout:
    """grpo_continuous.py's collect_group_rollouts on uint8 frames, not normalized: every member of every group runs to the
    end of its episode (group g resets with seeds[g]: on CarRacing, one track), or until `max_steps` env steps (the rest of
    the run's budget) cut every live member at the same t. on_episode(steps into the rollout, return, length) for each
    episode that ends."""
    M = len(seeds) * group_size
    obs, _ = members.reset(seed=[seeds[m // group_size] for m in range(M)])
    alive = torch.ones(M, dtype=torch.bool)
    episode_return = torch.zeros(M, dtype=torch.float64)
    x = torch.tensor(obs)  # the policy's input: every member's frames; an ended member keeps its last, masked
    obs_rows: list[torch.Tensor] = []
    action_rows: list[torch.Tensor] = []
    reward_rows: list[torch.Tensor] = []
    mask_rows: list[torch.Tensor] = []
    steps = 0
    while alive.any() and steps < max_steps:
        live = alive.nonzero()[:, 0]
        x[live] = torch.from_numpy(obs)[live]
        t0 = time.perf_counter()
        action = policy(x)  # a tensor: the clip below takes it
        timings.policy_forward_s += time.perf_counter() - t0
        obs_rows.append(x.clone())
        action_rows.append(action)
        mask_rows.append(alive.float())
        t0 = time.perf_counter()
        obs, reward, terminated, truncated, _ = members.step(env_action(action, low, high).numpy())
        runlib.safe_point()  # a signal stops the run here, losing only this iteration
        timings.env_step_s += time.perf_counter() - t0
        paid = torch.where(alive, torch.from_numpy(reward), 0.0)
        episode_return += paid
        reward_rows.append(paid.float())
        for k in torch.from_numpy(terminated | truncated)[live].nonzero()[:, 0].tolist():
            alive[live[k]] = False
            on_episode(steps + k + 1, episode_return[live[k]].item(), len(mask_rows))
        steps += len(live)
    return GroupRollout(
        obs=torch.stack(obs_rows),
        actions=torch.stack(action_rows),
        rewards=torch.stack(reward_rows),
        mask=torch.stack(mask_rows),
    )


def make_group_batch(
    agent: Agent, ref_agent: Agent, rollout: GroupRollout, args: Args, device: torch.device, chunk: int = 1024
) -> Batch:
    """grpo_continuous.py's make_group_batch, the log-probs `chunk` frames at a time (a rollout of frames at once would
    hold gigabytes)."""
    kept = kept_groups(rollout.rewards, args.group_size) if args.drop_equal_groups else torch.ones(rollout.mask.shape[1])
    valid = (rollout.mask * kept).view(-1) > 0
    paid = RewardDelay.of_episodes(rollout.rewards, rollout.mask, args.reward_delay)  # as trained on
    advantages = group_advantages(
        paid, rollout.mask, args.group_size, args.adv_mode, args.gamma, args.adv_norm, args.adv_baseline
    )
    obs = rollout.obs.flatten(0, 1)[valid].to(device)
    actions = rollout.actions.flatten(0, 1)[valid].to(device)
    logprobs, ref_logprobs = [], []
    with torch.no_grad():
        for obs_chunk, actions_chunk in zip(obs.split(chunk), actions.split(chunk)):
            logprobs.append(agent.dist(obs_chunk).log_prob(actions_chunk).sum(-1))
            ref_logprobs.append(ref_agent.dist(obs_chunk).log_prob(actions_chunk).sum(-1))
    return Batch(
        obs=obs,
        actions=actions,
        logprobs=torch.cat(logprobs),
        ref_logprobs=torch.cat(ref_logprobs),
        advantages=advantages.view(-1)[valid].to(device),
    )


def main(args: Args) -> None:
    check_args(args)
    obs_space, act_space = check_env(args, whole_episodes=True)
    obs_shape = check_spaces(args, obs_space, act_space)
    run = Run(args, ALGO, total_steps=args.total_timesteps, init_sources=("ppo_cnn_carracing",), group_size=args.group_size)
    device = setup_torch(args)
    low, high = torch.from_numpy(act_space.low.astype(np.float32)), torch.from_numpy(act_space.high.astype(np.float32))
    agent = Agent(obs_shape, act_space.shape[0], args).to(device)
    ref_agent = copy.deepcopy(agent).requires_grad_(False)
    # fused Adam: one kernel for all parameters; a tensor learning rate: annealing it does not recompile --compile's step
    optimizer = torch.optim.Adam(agent.parameters(), lr=torch.tensor(args.learning_rate, device=device), eps=1e-5, fused=True)
    run.restore(agent=agent, optimizer=optimizer, ref_agent=ref_agent)

    mean_policy = MeanPolicy(agent, None, low, high, env_action).to(device)  # the evaluation's policy, and --export's
    make_eval_env = partial(make_env, args)  # render_mode -> an env with the training wrappers
    if args.eval_checkpoint:  # evaluate the saved policy (or --export it); no training
        run.evaluate_checkpoint(make_eval_env, mean_policy)
        return

    def on_episode(steps: int, episodic_return: float, length: int) -> None:  # it ended `steps` env steps into the rollout
        run.episode(global_step + steps, episodic_return, length)

    policy = runlib.policy_call(agent.sample, args, device)  # on CUDA with --compile: a CUDA graph
    update_step = runlib.make_update_step(agent, optimizer, grpo_loss, args)
    members = make_members(args)

    global_step = run.global_step
    iteration = run.iteration
    while global_step < args.total_timesteps:
        iteration += 1
        t_iter = time.perf_counter()
        lr = lr_factor(args.lr_schedule, global_step / args.total_timesteps) * args.learning_rate
        optimizer.param_groups[0]["lr"].fill_(lr)
        if args.ref_update_every and (iteration - 1) % args.ref_update_every == 0:
            ref_agent.load_state_dict(agent.state_dict())
        seeds = group_seeds(args.seed, iteration, args.num_groups)
        budget = args.total_timesteps - global_step
        timings = Timings()
        with torch.inference_mode():
            rollout = collect_group_rollouts(members, policy, seeds, args.group_size, low, high, on_episode, budget, timings)
        timings.rollout_s = time.perf_counter() - t_iter
        num_steps = int(rollout.mask.sum())
        global_step += num_steps
        batch = make_group_batch(agent, ref_agent, rollout, args, device)
        stats = grpo_update(update_step, batch, args)
        stats |= group_stats(rollout.rewards, batch.advantages, args.group_size)
        timings.update_s = time.perf_counter() - t_iter - timings.rollout_s
        run.end_iteration(iteration, global_step, stats, timings, make_eval_env, mean_policy.act)
    members.close()
    run.close()


def check_args(args: Args) -> None:
    """Every argument a user can get wrong, checked before anything is written (the frames' and the CNN's with the env,
    ppo_cnn_carracing.check_spaces); fills in the default --exp-name."""
    if args.exp_name is None:
        args.exp_name = f"{ALGO}_g{args.group_size}"
    positive: tuple[str, ...] = ("num_groups", "minibatch_size", "update_epochs", "learning_rate", "clip_coef")
    positive += ("max_grad_norm", "frame_skip", "frame_stack", "cnn_feature_size")
    non_negative = ("ref_update_every", "kl_coef", "ent_coef")
    check_arg_ranges(args, positive, non_negative, positive_or_none=("target_kl", "max_negative_steps", "clip_coef_high"))
    if args.group_size < 2:
        raise UsageError(f"--group-size must be at least 2 (a group compares its trajectories), got {args.group_size}")
    if not 0 < args.gamma <= 1:
        raise UsageError(f"--gamma must be in (0, 1], got {args.gamma}")


if __name__ == "__main__":
    cli(main, Args, ALGO)
