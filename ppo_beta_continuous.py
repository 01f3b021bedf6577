"""PPO with a Beta policy for bounded continuous control, in one file.

A Gaussian puts mass outside the action bounds, where the env clips it. The Beta policy (Chou, Maturana, Scherer, ICML 2017)
samples x in (0, 1) per action dimension and maps it affinely onto [low, high]: all its mass is inside the bounds. The rest
is ppo_continuous.py (CleanRL's PPO with time limits bootstrapped and SAME_STEP autoreset), as a diff shows.
"""

import os
import sys

if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo rendering for evaluation videos

import contextlib
import io
import itertools
import json
import logging
import math
import random
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

    env_id: str = "Hopper-v4"
    """the id of the gymnasium environment (continuous actions, flat observations)"""
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
    track: bool = False
    """if toggled, send the TensorBoard scalars, the arguments and the eval videos to Weights & Biases"""
    wandb_project_name: str = "cleanrl"
    """the W&B project"""
    wandb_entity: Optional[str] = None
    """the W&B entity (team); None: your default"""


def make_env(env_id, max_episode_steps=None, render_mode=None):
    env = gym.make(env_id, max_episode_steps=max_episode_steps, **({"render_mode": render_mode} if render_mode else {}))
    vis = getattr(getattr(env.unwrapped, "model", None), "vis", None)
    if render_mode and vis is not None:  # MuJoCo on a software GL spends ~85% of a frame on the shadow map
        vis.quality.shadowsize, vis.quality.offsamples = 0, 0
    return env


class EnvPoolVectorEnv:
    """EnvPool's C++ envs as a SAME_STEP vector env: its own autoreset is NEXT_STEP-like, so an env that ends is reset at
    once by id, and its final observation goes to info["final_obs"]."""

    def __init__(self, env_id, num_envs, max_episode_steps=None):
        import envpool

        kwargs = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
        threads = min(num_envs, len(os.sched_getaffinity(0)))  # EnvPool is Linux-only, where this is the usable cores
        self.make = lambda seed: envpool.make(env_id, "gymnasium", num_envs=num_envs, seed=seed, num_threads=threads, **kwargs)
        self.pool, self.num_envs = None, num_envs

    def reset(self, seed):
        # EnvPool seeds env i with seed + i when it makes the pool, and its reset takes no seed: a reset makes a new pool
        self.close()
        self.pool = self.make(seed)
        return self.pool.reset()[0].copy(), {}

    def step(self, actions):
        obs, reward, terminated, truncated, _ = self.pool.step(actions)
        obs, done, info = obs.copy(), np.flatnonzero(terminated | truncated), {}
        if len(done):
            info["final_obs"] = obs.copy()
            reset_obs, reset_info = self.pool.reset(done.astype(np.int32))
            obs[reset_info["env_id"]] = reset_obs
        return obs, reward, terminated, truncated, info

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def make_vector_env(args):
    if args.env_backend == "envpool":
        return EnvPoolVectorEnv(args.env_id, args.num_envs, args.max_episode_steps)
    # SAME_STEP, not gymnasium's default NEXT_STEP, which would add a reset step whose action is ignored
    vector_env = gym.vector.SyncVectorEnv if args.vector_mode == "sync" else gym.vector.AsyncVectorEnv
    env_fns = [partial(make_env, args.env_id, args.max_episode_steps) for _ in range(args.num_envs)]
    return vector_env(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, copy=False)  # we copy what we keep


class RunningMeanStd:
    """Running mean and variance of batches (Chan et al.), float64; numpy: a torch call would cost 10x on every env step."""

    def __init__(self, shape=()):
        self.mean, self.var, self.count = np.zeros(shape), np.ones(shape), 1e-4

    def update(self, x):
        n, add = x.shape[0], np.add.reduce  # not x.mean()/x.var(): their wrappers cost more than the math on a few rows
        batch_mean = add(x, 0) / n
        delta, total, centered = batch_mean - self.mean, self.count + n, x - batch_mean
        m2 = self.var * self.count + add(centered * centered, 0) + delta * delta * (self.count * n / total)
        self.mean, self.var, self.count = self.mean + delta * (n / total), m2 / total, total

    def state_dict(self):  # tensors, which a weights_only checkpoint can hold
        return {"mean": torch.as_tensor(self.mean), "var": torch.as_tensor(self.var), "count": self.count}

    def load_state_dict(self, state):
        self.mean, self.var, self.count = state["mean"].numpy(), state["var"].numpy(), float(state["count"])


class ObsNormalizer(RunningMeanStd):
    def __init__(self, shape, clip, enabled=True, frozen=False):
        super().__init__(shape)
        self.clip, self.enabled, self.frozen = clip, enabled, frozen

    def __call__(self, obs, update=False):
        if self.enabled and update and not self.frozen:
            self.update(obs)
        if self.enabled:
            obs = np.minimum(np.maximum((obs - self.mean) / np.sqrt(self.var + 1e-8), -self.clip), self.clip)
        return obs.astype(np.float32)


class RewardScaler:
    """CleanRL's reward scaling: each reward over the running std of the discounted return, which takes it in first."""

    def __init__(self, num_envs, gamma, clip, enabled=True):
        self.rms, self.returns = RunningMeanStd(), np.zeros(num_envs)
        self.gamma, self.clip, self.enabled = gamma, clip, enabled

    def __call__(self, rewards, dones):
        if not self.enabled:
            return rewards.astype(np.float32)
        self.returns = self.returns * self.gamma + rewards
        self.rms.update(self.returns)
        self.returns[dones] = 0.0
        return np.minimum(np.maximum(rewards / np.sqrt(self.rms.var + 1e-8), -self.clip), self.clip).astype(np.float32)

    def state_dict(self):
        return {"rms": self.rms.state_dict(), "returns": torch.as_tensor(self.returns)}

    def load_state_dict(self, state):
        self.rms.load_state_dict(state["rms"])
        self.returns = state["returns"].numpy()


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


BETA_EPS = 1e-6  # samples are kept this far from 0 and 1, where float32 rounding would make log x or log(1 - x) infinite


def beta_dist(out):
    """The actor's 2 * act_dim outputs -> Beta(alpha, beta), alpha and beta = 1 + softplus > 1: unimodal (Chou et al.)."""
    alpha, beta = (1.0 + nn.functional.softplus(out)).chunk(2, dim=-1)
    return Beta(alpha, beta, validate_args=False)


class Agent(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden_sizes):
        super().__init__()
        self.critic = mlp(obs_dim, hidden_sizes, 1, out_std=1.0)
        self.actor = mlp(obs_dim, hidden_sizes, 2 * act_dim, out_std=0.01)

    def dist(self, obs):
        return beta_dist(self.actor(obs))

    def dist_and_value(self, obs):
        return self.dist(obs), self.critic(obs)

    def sample(self, obs):
        return self.dist(obs).sample().clamp(BETA_EPS, 1.0 - BETA_EPS)


def env_action(x, low, high):
    """A sample x in (0, 1) -> the env's action in [low, high]. The log-prob is that of x: the map's Jacobian is a
    constant, which cancels in the PPO ratio."""
    return low + (high - low) * x


def compute_gae(rewards, values, next_values, dones, gamma, gae_lambda):
    """GAE(lambda) over (T, N); next_values[t]: V(final obs) after a truncation, 0 after a termination (Pardo et al. 2018)."""
    deltas = rewards + gamma * next_values - values
    carry = gamma * gae_lambda * (1.0 - dones)
    advantages, lastgaelam = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        lastgaelam = advantages[t] = deltas[t] + carry[t] * lastgaelam
    return advantages, advantages + values


LOSS_STATS = [f"losses/{k}" for k in ("approx_kl", "old_approx_kl", "clipfrac", "policy_loss", "value_loss", "entropy")]


def ppo_loss(agent, obs, actions, logprobs, advantages, returns, values, args):
    """The PPO loss of a minibatch, and its statistics (LOSS_STATS) as one tensor."""
    dist, newvalue = agent.dist_and_value(obs)
    logratio = dist.log_prob(actions).sum(-1) - logprobs
    ratio = logratio.exp()
    if args.norm_adv:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
    newvalue = newvalue.view(-1)
    v_loss = (newvalue - returns) ** 2
    if args.clip_vloss:
        v_clipped = values + (newvalue - values).clamp(-args.clip_coef, args.clip_coef)
        v_loss = torch.max(v_loss, (v_clipped - returns) ** 2)
    v_loss = 0.5 * v_loss.mean()
    entropy = dist.entropy().sum(-1).mean()
    with torch.no_grad():  # http://joschu.net/blog/kl-approx.html
        kls = ((ratio - 1) - logratio).mean(), (-logratio).mean()
        stats = torch.stack([*kls, ((ratio - 1).abs() > args.clip_coef).float().mean(), pg_loss, v_loss, entropy])
    return pg_loss - args.ent_coef * entropy + args.vf_coef * v_loss, stats


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


def ppo_update(update_step, batch, args):
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


def collect_rollout(envs, next_obs, policy, obs_norm, reward_scaler, buf, low, high, episodes, on_episode):
    """Fill `buf` with T steps of every env (SAME_STEP autoreset: a done's final observation is in info["final_obs"]).
    Returns next_obs, the final observations as [(t, env, normalized obs)], and the seconds in the policy and the envs."""
    final, timings = [], {"policy_forward_s": 0.0, "env_step_s": 0.0}
    for t in range(len(buf["rewards"])):
        buf["obs"][t] = obs = obs_norm(next_obs, update=True)
        t0 = time.perf_counter()
        buf["actions"][t] = action = policy(torch.from_numpy(obs)).numpy()
        t1 = time.perf_counter()
        next_obs, reward, terminated, truncated, info = envs.step(env_action(action, low, high))
        timings["policy_forward_s"] += t1 - t0
        timings["env_step_s"] += time.perf_counter() - t1
        done = terminated | truncated
        buf["rewards"][t], buf["dones"][t], buf["terminations"][t] = reward_scaler(reward, done), done, terminated
        episodes[0] += reward
        episodes[1] += 1
        for i in np.flatnonzero(done):
            final.append((t, i, obs_norm(info["final_obs"][i][None])))
            on_episode(episodes[0, i], episodes[1, i], t)
            episodes[:, i] = 0
    return next_obs, final, timings


def make_batch(agent, buf, next_obs, final, args, device):
    """Values and log-probs of the rollout in one batched call each (the policy did not change during it), then GAE."""
    T, N = buf["rewards"].shape
    rollout = {k: torch.from_numpy(v) for k, v in buf.items()}
    obs, actions = (rollout[k].view(T * N, -1).to(device) for k in ("obs", "actions"))
    with torch.no_grad():
        logprobs = agent.dist(obs).log_prob(actions).sum(-1)
        values = agent.critic(obs).view(T, N).cpu()
        bootstrap = torch.from_numpy(np.concatenate([next_obs, *(o for *_, o in final)]))  # next_obs, then final obs
        bootstrap = agent.critic(bootstrap.to(device)).view(-1).cpu()
    next_values = torch.cat([values[1:], bootstrap[None, :N]])
    for k, (t, i, _) in enumerate(final):  # the env reset after step t: the next state is the final observation
        next_values[t, i] = bootstrap[N + k]
    next_values *= 1.0 - rollout["terminations"]
    advantages, returns = compute_gae(rollout["rewards"], values, next_values, rollout["dones"], args.gamma, args.gae_lambda)
    batch = {"obs": obs, "actions": actions, "logprobs": logprobs}  # in ppo_loss's argument order
    batch |= {"advantages": advantages.view(-1), "returns": returns.view(-1), "values": values.reshape(-1)}
    return {k: v.to(device) for k, v in batch.items()}


def main(args: Args):
    check_args(args)
    obs_space, act_space = check_env(args)
    run_dir, ckpt, init = open_run(args)
    # -- nothing has been written before this line --
    run = Run(args, run_dir, ckpt, init, total_steps=args.num_iterations * args.batch_size)
    random.seed(args.seed)  # a resume restores torch's generator from the checkpoint (run.restore)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    obs_dim, act_dim = obs_space.shape[0], act_space.shape[0]
    low, high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)
    agent = Agent(obs_dim, act_dim, args.hidden_sizes).to(device)
    # fused Adam: one kernel for all parameters; a tensor learning rate: annealing it does not recompile --compile's step
    optimizer = torch.optim.Adam(agent.parameters(), lr=torch.tensor(args.learning_rate, device=device), eps=1e-5, fused=True)
    obs_norm = ObsNormalizer((obs_dim,), args.clip_obs, args.norm_obs, frozen=bool(args.init_from) and args.freeze_init_norm)
    reward_scaler = RewardScaler(args.num_envs, args.gamma, args.clip_reward, args.norm_reward)
    run.restore(agent=agent, optimizer=optimizer, obs_norm=obs_norm, reward_scaler=reward_scaler)

    def act_deterministic(obs):  # the evaluation policy: the mean of the Beta
        with torch.inference_mode():
            return env_action(agent.dist(torch.from_numpy(obs_norm(obs)).to(device)).mean.cpu().numpy(), low, high)

    make_eval_env = partial(make_env, args.env_id, args.max_episode_steps)  # render_mode -> an env

    def on_episode(episodic_return, length, t):  # an episode ended at step t of the rollout
        run.episode(global_step + (t + 1) * N, episodic_return, length)

    if args.eval_checkpoint:  # evaluate the saved policy; no training
        return run.evaluate(make_eval_env, act_deterministic)

    def sample(obs):  # the rollout's policy call
        return agent.sample(obs.to(device)).cpu()

    policy = torch.compile(sample) if args.compile and device.type == "cuda" else sample  # on a CPU it does not pay
    update_step = make_update_step(agent, optimizer, ppo_loss, args)
    envs = make_vector_env(args)
    # A resumed run cannot restore the envs' internal state: it starts new episodes from new seeds.
    next_obs, _ = envs.reset(seed=args.seed + args.num_envs * run.iteration)
    T, N = args.num_steps, args.num_envs
    buf = {"obs": np.zeros((T, N, obs_dim), np.float32), "actions": np.zeros((T, N, act_dim), np.float32)}
    buf.update({k: np.zeros((T, N), np.float32) for k in ("rewards", "dones", "terminations")})
    episodes = np.zeros((2, N))  # the running episodes' returns and lengths

    global_step = run.global_step
    for iteration in range(run.iteration + 1, args.num_iterations + 1):
        t_iter = time.perf_counter()
        progress = (iteration - 1.0) / args.num_iterations  # of the run, for --lr-schedule
        decay = {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 + 0.5 * math.cos(math.pi * progress)}
        optimizer.param_groups[0]["lr"].fill_(decay[args.lr_schedule] * args.learning_rate)
        with torch.inference_mode():
            next_obs, final, timings = collect_rollout(
                envs, next_obs, policy, obs_norm, reward_scaler, buf, low, high, episodes, on_episode
            )
        timings["rollout_s"] = time.perf_counter() - t_iter
        global_step += args.batch_size
        batch = make_batch(agent, buf, obs_norm(next_obs), final, args, device)
        stats = ppo_update(update_step, batch, args)
        y_pred, y_true = batch["values"].cpu().numpy(), batch["returns"].cpu().numpy()
        stats["losses/explained_variance"] = float(1 - np.var(y_true - y_pred) / np.var(y_true)) if np.var(y_true) else 0.0
        timings["update_s"] = time.perf_counter() - t_iter - timings["rollout_s"]
        run.end_iteration(iteration, global_step, stats, timings, make_eval_env, act_deterministic)
    envs.close()
    run.close()


def check_env(args):
    """Make one env to check its spaces before anything is written."""
    with warnings.catch_warnings(action="ignore"):  # gymnasium's v4 deprecation warning would precede a one-line error
        try:
            env = gym.make(args.env_id)
        except Exception as e:  # unknown id, a missing dependency, a broken env
            raise UsageError(f"cannot make env {args.env_id!r} ({str(e).splitlines()[0]}): pass a registered --env-id")
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(act_space, gym.spaces.Box):
        raise UsageError(f"{args.env_id} has {type(act_space).__name__} actions; this script needs continuous (Box) ones")
    if not (np.isfinite(act_space.low).all() and np.isfinite(act_space.high).all()):
        raise UsageError(f"{args.env_id} has unbounded actions; a Beta policy needs finite bounds: use ppo_continuous.py")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise UsageError(f"{args.env_id} has observations of shape {obs_space.shape}; this script needs flat vectors")
    if args.env_backend == "envpool":
        check_envpool_env(args, obs_space, act_space)
    return obs_space, act_space


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


def check_args(args):
    """Every argument a user can get wrong, checked before anything is written; sets CleanRL's derived batch sizes."""
    if not args.exp_name or "/" in args.exp_name or os.sep in args.exp_name:
        raise UsageError(f"--exp-name must be a non-empty name without path separators, got {args.exp_name!r}")
    positive = ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "eval_episodes")
    for name in positive + ("learning_rate", "clip_coef", "max_grad_norm", "clip_obs", "clip_reward"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("eval_every", "checkpoint_every", "torch_threads"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("max_episode_steps", "target_kl"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive (or None), got {getattr(args, name)}")
    if not (0 < args.gamma <= 1 and 0 <= args.gae_lambda <= 1):
        raise UsageError("--gamma must be in (0, 1] and --gae-lambda in [0, 1]")
    if not args.hidden_sizes or min(args.hidden_sizes) <= 0:
        raise UsageError(f"every --hidden-sizes entry must be positive, got {args.hidden_sizes}")
    args.batch_size = args.num_envs * args.num_steps
    if args.batch_size % args.num_minibatches:
        raise UsageError(f"--num-minibatches {args.num_minibatches} does not divide the batch of {args.batch_size} steps")
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = args.total_timesteps // args.batch_size
    if args.num_iterations == 0:
        raise UsageError(f"--total-timesteps {args.total_timesteps} is less than one batch ({args.batch_size} steps)")


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
