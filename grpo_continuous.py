"""GRPO for continuous control: a critic-free policy gradient with same-start group rollouts.

Group Relative Policy Optimization (Shao et al., DeepSeekMath, arXiv 2402.03300) drops PPO's
critic: it samples a *group* of G answers to one prompt and scores each against the others. Here a
group is G trajectories from the same start state (every member reset with the same seed), and:
- `--adv-mode episode` (outcome supervision, as in DeepSeekMath): every step of trajectory i gets
  A_i = (R_i - mean_group R) / (std_group R + eps);
- `--adv-mode step` (process supervision, the per-timestep group baseline of Group Policy
  Gradient, arXiv 2510.03679): step t of trajectory i gets its discounted reward-to-go normalized by
  the mean and std of the group's reward-to-go at the same t; a member that has already ended counts
  with zero future reward, so staying alive longer than the group is credited where it happens.
The loss is PPO's clipped surrogate on these advantages plus `--kl-coef` times the k3 estimate of
KL(pi_theta || pi_ref) to a frozen reference policy (Schulman, http://joschu.net/blog/kl-approx.html),
as in DeepSeekMath. The policy, observation normalization, evaluation, run layout and resume are
ppo_continuous.py's.

Run:  python grpo_continuous.py --env-id Hopper-v4 --group-size 8
"""

import os
import sys

if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo rendering for evaluation videos

import contextlib
import copy
import io
import itertools
import json
import logging
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro


@dataclass
class Args:
    exp_name: Optional[str] = None
    """the name of this experiment (part of the run directory's name; default grpo_continuous_g{group_size})"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch and the environments)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, train on CUDA when it is available (falls back to CPU with a warning)"""
    torch_threads: int = 1
    """torch CPU threads (1 is fastest for small MLPs; 0 keeps torch's default)"""
    update_impl: Literal["numpy", "torch"] = "numpy"
    """the update on CPU: `numpy` (hand-written backprop, ~5x faster a minibatch for these small MLPs) or `torch` (autograd: the reference, always used on CUDA)"""
    runs_dir: str = "runs"
    """where run directories are created: {runs_dir}/{env_id}__{exp_name}__seed{seed}"""
    resume: bool = False
    """continue the run in the run directory from checkpoints/latest.pt (starts fresh if there is none)"""

    # Environment
    env_id: str = "Hopper-v4"
    """the id of the gymnasium environment (continuous actions, flat observations, episodes that end)"""
    env_backend: Literal["gymnasium", "envpool"] = "gymnasium"
    """the training envs' implementation: `gymnasium`, or `envpool` (C++, batched; Linux: pip install envpool); evaluation and videos always run gymnasium's env of the same id"""
    total_timesteps: int = 1_000_000
    """total environment steps of the experiment (the last iteration is cut short to fit it)"""
    max_episode_steps: Optional[int] = None
    """override the env's time limit (episode length) for training and evaluation"""

    # Algorithm
    group_size: int = 8
    """G: the trajectories per group, all from the same start state (at least 2)"""
    num_groups: int = 4
    """the groups per iteration, each from its own start state"""
    adv_mode: Literal["episode", "step"] = "episode"
    """group-relative advantages: `episode` (normalized episode return, the same on every step) or `step` (normalized reward-to-go at each t)"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    anneal_lr: bool = True
    """toggle linear annealing of the learning rate to zero over total_timesteps"""
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
    """iterations between refreshes of the reference policy to the current one (0: keep the initial policy)"""
    ent_coef: float = 0.0
    """coefficient of the entropy bonus"""
    max_grad_norm: float = 0.5
    """the maximum norm for the global gradient clipping"""
    target_kl: Optional[float] = None
    """stop the update epochs early when the approximate KL to the rollout policy exceeds this (None: never)"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer sizes of the actor MLP (tanh)"""
    norm_obs: bool = True
    """toggle running observation normalization (statistics held by the agent)"""
    clip_obs: float = 10.0
    """normalized observations are clipped to [-clip_obs, clip_obs]"""

    # Evaluation, checkpoints
    eval_every: int = 50_000
    """env steps between evaluations of the deterministic policy (0 disables evaluation)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    capture_video: bool = True
    """film the best episode of each evaluation to videos/*.mp4"""
    checkpoint_every: int = 25_000
    """env steps between checkpoints/latest.pt (0: only the final one, which is always written)"""


# ==== plumbing: begin (the same text in every training script; tests/test_plumbing.py) ====
ALGO = Path(__file__).stem
RESUME_MAY_DIFFER = ("resume", "runs_dir", "cuda", "torch_threads", "update_threads", "update_impl", "capture_video")  # how, not what


class UsageError(Exception):
    """A mistake the user can fix; reported as one line, exit status 2, nothing written."""


class Diverged(Exception):
    """NaN/inf in the losses or parameters; the last good checkpoint is kept."""


def atomic_write_bytes(path, data: bytes):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def atomic_write_json(path, obj):
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def atomic_torch_save(path, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_dir_of(args) -> Path:
    return Path(args.runs_dir) / f"{args.env_id.replace('/', '-')}__{args.exp_name}__seed{args.seed}"


def load_checkpoint(path, device="cpu"):
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which, never a traceback
        raise UsageError(f"cannot read checkpoint {path} ({type(e).__name__}); delete it to start the run afresh")


def open_run(args):
    """Decide, before anything is written, whether this is a fresh run or a resume.
    Returns (run_dir, checkpoint or None)."""
    run_dir = run_dir_of(args)
    latest = run_dir / "checkpoints" / "latest.pt"
    if not args.resume:
        if run_dir.exists():
            raise UsageError(f"run directory {run_dir} exists; pass --resume to continue it, or change --exp-name/--seed/--runs-dir")
        return run_dir, None
    if not latest.exists():
        return run_dir, None
    ckpt = load_checkpoint(latest)
    if not isinstance(ckpt, dict) or "metrics" not in ckpt or "args" not in ckpt:
        raise UsageError(f"{latest} is not a checkpoint of {ALGO}.py; delete it to start the run afresh")
    saved, now = ckpt["args"], asdict(args)
    default = {f.name: f.default for f in fields(args)}  # a flag newer than the run: the run had its default
    changed = [f"--{k.replace('_', '-')} {saved.get(k, default[k])!r} -> {now[k]!r}" for k in now
               if k not in RESUME_MAY_DIFFER and saved.get(k, default[k]) != now[k]]
    if changed:
        raise UsageError(f"--resume with other arguments than the run was started with ({'; '.join(changed)}); "
                         "use the original ones or a new --exp-name")
    return run_dir, ckpt


def new_metrics(args, group_size=None):
    return {
        "env_id": args.env_id, "algo": ALGO, "exp_name": args.exp_name, "seed": args.seed,
        "group_size": group_size, "args": asdict(args), "status": "running", "completed": False,
        "global_step": 0, "total_timesteps": args.total_timesteps, "sps": 0.0, "wall_time_s": 0.0,
        "best_eval_return": None,
        "train": {"global_step": [], "episodic_return": [], "episodic_length": []},
        "eval": {"global_step": [], "mean_return": [], "std_return": []},
    }


class Recorder:
    """Everything a run writes besides checkpoints and videos: metrics.json, timings.jsonl,
    logs/train.log, TensorBoard. On resume it rewinds all of them to the checkpoint, so curves
    have no gap and no duplicate."""

    def __init__(self, run_dir: Path, metrics: dict, resume_iteration: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir, self.metrics = run_dir, metrics
        for sub in ("logs", "checkpoints", "videos"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        for stale in run_dir.rglob("*.tmp*"):  # left by a kill -9 in the middle of an atomic write
            stale.unlink()
        self.timings_path = run_dir / "timings.jsonl"
        kept = []
        if resume_iteration and self.timings_path.exists():
            for line in self.timings_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by kill -9
                    continue
                if row.get("iteration", 0) <= resume_iteration:
                    kept.append(line + "\n")
        else:
            for old in run_dir.glob("events.out.tfevents.*"):  # fresh start: no stale curves
                old.unlink()
        atomic_write_bytes(self.timings_path, "".join(kept).encode())
        self.timings = open(self.timings_path, "a")
        self.log = logging.getLogger(f"{ALGO}.{run_dir}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(run_dir / "logs" / "train.log")):
            handler.setFormatter(fmt)
            self.log.addHandler(handler)
        self.writer = SummaryWriter(str(run_dir), purge_step=metrics["global_step"] + 1 if resume_iteration else None)
        if not resume_iteration:
            table = "\n".join(f"|{k}|{v}|" for k, v in metrics["args"].items())
            self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        self.flush()

    def episode(self, global_step, episodic_return, episodic_length):
        train = self.metrics["train"]
        train["global_step"].append(int(global_step))
        train["episodic_return"].append(float(episodic_return))
        train["episodic_length"].append(int(episodic_length))
        self.writer.add_scalar("charts/episodic_return", episodic_return, global_step)
        self.writer.add_scalar("charts/episodic_length", episodic_length, global_step)

    def scalars(self, global_step, values: dict):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step)

    def evaluation(self, global_step, returns):
        ev = self.metrics["eval"]
        ev["global_step"].append(int(global_step))
        ev["mean_return"].append(float(np.mean(returns)))
        ev["std_return"].append(float(np.std(returns)))
        self.scalars(global_step, {"eval/mean_return": ev["mean_return"][-1], "eval/std_return": ev["std_return"][-1]})
        best = self.metrics["best_eval_return"]
        improved = best is None or ev["mean_return"][-1] > best
        if improved:
            self.metrics["best_eval_return"] = ev["mean_return"][-1]
        return improved

    def timing(self, row: dict):
        self.timings.write(json.dumps(row) + "\n")
        self.timings.flush()

    def progress(self, global_step, total, sps, eval_return=None):
        rets = self.metrics["train"]["episodic_return"][-10:]
        eta = max(total - global_step, 0) / max(sps, 1e-9)  # GRPO may end an iteration past the budget
        self.log.info(
            f"step {global_step:,}/{total:,} ({100 * global_step / total:.0f}%) | SPS {sps:,.0f}"
            + (f" | return {np.mean(rets):,.1f} (last {len(rets)} episodes)" if rets else "")
            + (f" | eval {eval_return:,.1f}" if eval_return is not None else "")
            + f" | ETA {int(eta // 3600)}h{int(eta % 3600 // 60):02d}m{int(eta % 60):02d}s"
        )

    def flush(self):
        atomic_write_json(self.run_dir / "metrics.json", self.metrics)
        self.writer.flush()

    def close(self):
        self.flush()
        self.writer.close()
        self.timings.close()
        for handler in list(self.log.handlers):
            handler.close()
            self.log.removeHandler(handler)


def rng_states(np_rng):
    return {"python": random.getstate(), "numpy": np_rng.bit_generator.state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_states(states, np_rng):
    random.setstate(states["python"])
    np_rng.bit_generator.state = states["numpy"]
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def pick_device(args):
    if args.cuda and not torch.cuda.is_available():
        return torch.device("cpu"), "--cuda is on but CUDA is not available: training on CPU (pass --no-cuda to silence this)"
    return torch.device("cuda" if args.cuda else "cpu"), None


def run_episode(env, act, seed, on_frame=None, frame_every=1):
    """One episode of the deterministic policy `act` (a batch of observations -> a batch of
    actions) from `env.reset(seed=seed)`; returns (return, length). `on_frame` gets every
    `frame_every`-th rendered frame."""
    obs, _ = env.reset(seed=seed)
    episodic_return, length, done = 0.0, 0, False
    while not done:
        if on_frame and length % frame_every == 0:
            on_frame(env.render())
        obs, reward, terminated, truncated, _ = env.step(act(obs[None])[0])
        episodic_return, length, done = episodic_return + float(reward), length + 1, terminated or truncated
    return episodic_return, length


def evaluate(make_eval_env, act, seeds):
    env = make_eval_env(None)
    try:
        return np.array([run_episode(env, act, seed)[0] for seed in seeds])
    finally:
        env.close()


def record_video(make_eval_env, act, seed, path: Path):
    """Film one episode by re-running it from its seed (the policy and env are deterministic), so
    no evaluation ever holds frames in memory; written to a temp file, then renamed. Frames are
    thinned to at most ~30 per second of simulated time: rendering is the slow part."""
    import imageio

    env = make_eval_env("rgb_array")
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
    try:
        env_fps = env.metadata.get("render_fps") or 30
        frame_every = max(1, round(env_fps / 30))
        with imageio.get_writer(tmp, fps=env_fps / frame_every, macro_block_size=1) as writer:
            run_episode(env, act, seed, on_frame=writer.append_data, frame_every=frame_every)
        os.replace(tmp, path)
    finally:
        env.close()
        tmp.unlink(missing_ok=True)


def parse_args(args_type):
    """tyro reports a bad flag in a multi-line box; say it in one line, like every other error."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = tyro.cli(args_type)
    except SystemExit as e:
        if e.code:
            box = [line.strip("│╭╮╰╯ ") for line in captured.getvalue().splitlines()[1:]]
            body = " ".join(itertools.takewhile(lambda line: not line.startswith("─"), box))
            print(f"error: {' '.join(body.split()) or captured.getvalue().strip()} (see --help)", file=sys.stderr)
        else:
            sys.stderr.write(captured.getvalue())
        raise
    sys.stderr.write(captured.getvalue())
    return args


def cli(main_fn, args_type):
    args = parse_args(args_type)
    try:
        main_fn(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (Diverged, OSError) as e:  # OSError: e.g. a --runs-dir that cannot be written
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; continue with the same command and --resume", file=sys.stderr)
        sys.exit(130)


# ==== plumbing: end ====


def make_env(env_id, max_episode_steps=None, render_mode=None):
    def thunk():
        env = gym.make(env_id, max_episode_steps=max_episode_steps, **({"render_mode": render_mode} if render_mode else {}))
        vis = getattr(getattr(env.unwrapped, "model", None), "vis", None)
        if render_mode and vis is not None:
            # MuJoCo on a software GL (headless CPU) spends ~85% of a frame on the shadow map
            vis.quality.shadowsize, vis.quality.offsamples = 0, 0
        return env

    return thunk


def env_rate(args, num_steps):
    """Env steps per second of the members' envs, built and used as main uses them (groups reset
    with a seed, stepped in lockstep until every member has ended), under uniform random actions:
    the environment-bound limit of the train SPS (speed.py divides by it)."""
    _, act_space = check_env(args)
    act_space.seed(args.seed)
    M = args.num_groups * args.group_size
    members, actions = make_members(args), np.array([[act_space.sample() for _ in range(M)] for _ in range(64)])
    steps, rounds, start = 0, 0, time.perf_counter()
    while steps < num_steps:
        members.reset([args.seed + rounds * args.num_groups + m // args.group_size for m in range(M)])
        alive = np.ones(M, bool)
        while alive.any() and steps < num_steps:
            live = np.flatnonzero(alive)
            _, _, terminated, truncated = members.step(actions[steps % 64], live)
            alive[live[terminated | truncated]] = False
            steps += len(live)
        rounds += 1
    elapsed = time.perf_counter() - start
    members.close()
    return steps / elapsed


def check_env(args):
    """Make one env to check its spaces before anything is written."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            env = gym.make(args.env_id)
        except Exception as e:  # unknown id (gym.error.Error), a missing dependency, a broken env
            raise UsageError(f"cannot make env {args.env_id!r}: {str(e).splitlines()[0]} (pass a registered gymnasium id such as --env-id Hopper-v4)")
    obs_space, act_space, spec = env.observation_space, env.action_space, env.spec
    env.close()
    if not isinstance(act_space, gym.spaces.Box):
        raise UsageError(f"{args.env_id} has a {type(act_space).__name__} action space; this script needs continuous (Box) "
                         "actions: use an env such as Hopper-v4")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise UsageError(f"{args.env_id} has observations of shape {getattr(obs_space, 'shape', obs_space)}; this MLP script "
                         "needs flat vectors: for images use grpo_cnn_carracing.py")
    if args.max_episode_steps is None and (spec is None or spec.max_episode_steps is None):
        raise UsageError(f"{args.env_id} has no time limit and GRPO compares whole episodes: pass --max-episode-steps")
    if args.env_backend == "envpool":
        check_envpool_env(args, obs_space, act_space)
    return obs_space, act_space


def check_envpool_env(args, obs_space, act_space):
    """The EnvPool env must exist and look like gymnasium's (the evaluation env) to the policy."""
    import envpool

    if args.env_id not in envpool.list_all_envs():
        raise UsageError(f"EnvPool has no env {args.env_id!r}: use --env-backend gymnasium")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = envpool.make_spec(args.env_id)
        ep_obs, ep_act = spec.observation_space, spec.action_space
    if (ep_obs.shape != obs_space.shape or ep_obs.dtype != obs_space.dtype or ep_act.shape != act_space.shape
            or not np.allclose(ep_act.low, act_space.low) or not np.allclose(ep_act.high, act_space.high)):
        raise UsageError(f"EnvPool's {args.env_id} differs from gymnasium's (observations {ep_obs}, actions {ep_act}), which "
                         "evaluates the policy: use --env-backend gymnasium")


def check_args(args):
    if args.exp_name is None:
        args.exp_name = f"{ALGO}_g{args.group_size}"
    if not args.exp_name or "/" in args.exp_name or os.sep in args.exp_name:
        raise UsageError(f"--exp-name must be a non-empty name without path separators, got {args.exp_name!r}")
    if args.group_size < 2:
        raise UsageError(f"--group-size must be at least 2 (a trajectory needs a group to be compared with), got {args.group_size}")
    for name in ("total_timesteps", "num_groups", "minibatch_size", "update_epochs", "eval_episodes"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("eval_every", "checkpoint_every", "torch_threads", "ref_update_every", "kl_coef", "ent_coef"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.max_episode_steps is not None and args.max_episode_steps <= 0:
        raise UsageError(f"--max-episode-steps must be positive, got {args.max_episode_steps}")
    if not 0 < args.gamma <= 1:
        raise UsageError(f"--gamma must be in (0, 1], got {args.gamma}")
    for name in ("learning_rate", "clip_coef", "max_grad_norm", "clip_obs"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.target_kl is not None and not args.target_kl > 0:
        raise UsageError(f"--target-kl must be positive (or None), got {args.target_kl}")
    if not args.hidden_sizes or min(args.hidden_sizes) <= 0:
        raise UsageError(f"every --hidden-sizes entry must be positive, got {args.hidden_sizes}")
    if args.env_backend == "envpool":
        try:
            import envpool  # noqa: F401
        except ImportError:
            raise UsageError("--env-backend envpool needs EnvPool, which is not installed: pip install envpool (Linux x86_64 wheels)")


class RunningMeanStd:
    """Running mean and variance (Chan et al.'s parallel algorithm), float64, numpy."""

    def __init__(self, shape=()):
        self.mean, self.var, self.count = np.zeros(shape), np.ones(shape), 1e-4

    def update(self, x):
        # few temporaries and no x.mean()/x.var(): this runs every env step, usually on one row
        n = x.shape[0]
        total = self.count + n
        batch_mean = x[0] if n == 1 else np.add.reduce(x, axis=0) / n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        m2 = self.var * self.count + delta * delta * (self.count * n / total)
        if n > 1:
            m2 += np.add.reduce((x - batch_mean) ** 2, axis=0)
        self.var, self.count = m2 / total, total

    def state_dict(self):
        return {"mean": torch.as_tensor(self.mean), "var": torch.as_tensor(self.var), "count": self.count}

    def load_state_dict(self, state):
        self.mean, self.var, self.count = state["mean"].numpy().copy(), state["var"].numpy().copy(), float(state["count"])


class ObsNormalizer(RunningMeanStd):
    def __init__(self, shape, clip, enabled=True):
        super().__init__(shape)
        self.clip, self.enabled = clip, enabled

    def __call__(self, obs, update=False):
        if not self.enabled:
            return obs.astype(np.float32)
        if update:
            self.update(obs)
        return np.clip((obs - self.mean) / np.sqrt(self.var + 1e-8), -self.clip, self.clip).astype(np.float32)


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


class Agent(nn.Module):
    """The policy alone: GRPO has no critic."""

    def __init__(self, obs_dim, act_dim, hidden_sizes, clip_obs=10.0, norm_obs=True):
        super().__init__()
        self.actor_mean = mlp(obs_dim, hidden_sizes, act_dim, out_std=0.01)
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))
        self.obs_rms = ObsNormalizer((obs_dim,), clip_obs, norm_obs)

    def get_extra_state(self):  # the observation statistics travel with the weights
        return self.obs_rms.state_dict()

    def set_extra_state(self, state):
        self.obs_rms.load_state_dict(state)

    def log_prob(self, obs, actions):
        return gaussian_log_prob(actions, self.actor_mean(obs), self.actor_logstd)


def gaussian_log_prob(actions, mean, logstd):
    """log N(actions; mean, exp(logstd)^2), summed over action dimensions."""
    return (-0.5 * ((actions - mean) * torch.exp(-logstd)) ** 2 - logstd - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(logstd):
    return (0.5 + 0.5 * math.log(2 * math.pi) + logstd).sum(-1)


class NumpyActor:
    """A CPU/numpy snapshot of the actor for the rollout: a batch-of-one MLP call costs a few
    microseconds in numpy and ~100 in torch, and a GPU never pays a transfer per env step."""

    def __init__(self, agent: Agent):
        linears = [m for m in agent.actor_mean if isinstance(m, nn.Linear)]
        self.layers = [(m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy()) for m in linears]
        self.std = torch.exp(agent.actor_logstd).detach().cpu().numpy()[0]

    def mean(self, x):
        for w, b in self.layers[:-1]:
            x = np.tanh(x @ w + b)
        w, b = self.layers[-1]
        return x @ w + b


def group_seeds(seed, iteration, num_groups):
    """The reset seed of each group of an iteration: a function of (seed, iteration, group) only, so a
    resumed run replays exactly the start states it would have seen."""
    return [int(np.random.SeedSequence([seed, iteration, g]).generate_state(1)[0]) for g in range(num_groups)]


def group_advantages(rewards, mask, group_size, adv_mode, gamma, eps=1e-8):
    """Group-relative advantages of a (T, M) rollout of M = num_groups * group_size members, member
    m in group m // group_size; mask[t, m] is 1 while member m's episode runs (it ends at its first 0).

    `episode`: A[t, m] = (R_m - mean R) / (std R + eps) over m's group, R the undiscounted return.
    `step`: A[t, m] = (G_t^m - mean_t) / (std_t + eps), G_t^m the discounted reward-to-go of m from t
    and mean_t, std_t over m's group at the same t, members that have ended counting G_t = 0.
    std is the population std; a group whose values are all equal gets zero advantage, not NaN.
    Returns (T, M) float32, zero where mask is 0."""
    T, M = rewards.shape
    rewards = rewards * mask
    if adv_mode == "episode":
        values = np.broadcast_to(rewards.sum(0), (T, M))
    else:
        values = np.zeros((T, M))
        running = np.zeros(M)
        for t in reversed(range(T)):
            running = rewards[t] + gamma * running  # 0 after the end: rewards are masked
            values[t] = running
    grouped = values.reshape(T, M // group_size, group_size)
    mean, std = grouped.mean(-1, keepdims=True), grouped.std(-1, keepdims=True)
    return (((grouped - mean) / (std + eps)).reshape(T, M) * mask).astype(np.float32)


def k3_kl(logprob, ref_logprob):
    """Unbiased, always >= 0 estimate of KL(pi_theta || pi_ref) from actions sampled by pi_theta:
    r - log r - 1 with r = pi_ref / pi_theta (DeepSeekMath eq. 4). log r is clamped to +-20 so one
    far-off sample cannot overflow exp."""
    log_r = (ref_logprob - logprob).clamp(-20.0, 20.0)
    return torch.exp(log_r) - log_r - 1.0


class GroupRollout:
    """One iteration's groups: (T, M) arrays, T the longest member's length, mask 0 after an end."""

    def __init__(self, obs, actions, rewards, mask):
        self.obs, self.actions, self.rewards, self.mask = obs, actions, rewards, mask
        self.num_steps = int(mask.sum())
        self.returns = rewards.sum(0)  # undiscounted, per member (rewards are 0 after an end)


def available_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def envpool_threads(num_envs):
    return max(1, min(num_envs, available_cores()))


class GymMembers:
    """The members' gymnasium envs. Members never autoreset (each runs one episode per iteration),
    so plain envs, not a vector env, and only the live ones are stepped."""

    def __init__(self, env_id, max_episode_steps, num_members):
        self.envs = [make_env(env_id, max_episode_steps)() for _ in range(num_members)]

    def reset(self, seeds):
        """Member m starts from env.reset(seed=seeds[m])."""
        return np.array([env.reset(seed=int(s))[0] for env, s in zip(self.envs, seeds)])

    def step(self, actions, live):
        """Steps the live members (indices), each with its row of `actions`; returns their obs,
        rewards, terminations and truncations, in the order of `live`."""
        obs, reward, terminated, truncated = [], np.zeros(len(live)), np.zeros(len(live), bool), np.zeros(len(live), bool)
        for k, m in enumerate(live):
            o, reward[k], terminated[k], truncated[k], _ = self.envs[m].step(actions[m])
            obs.append(o)
        return np.array(obs), reward, terminated, truncated

    def close(self):
        for env in self.envs:
            env.close()


class EnvPoolMembers:
    """The members as one EnvPool pool (`--env-backend envpool`), made afresh each iteration with a
    seed per env (EnvPool's `env_seed`; its reset takes no seed): members of a group get the group's
    seed, so they start from the same state, as gymnasium's reset(seed=) gives. The pool steps all
    members at once; one that has ended is stepped on (EnvPool autoresets it) and ignored."""

    def __init__(self, env_id, max_episode_steps, num_members):
        import envpool

        self.envpool, self.env_id, self.max_episode_steps, self.pool = envpool, env_id, max_episode_steps, None

    def reset(self, seeds):
        self.close()
        kwargs = {"max_episode_steps": self.max_episode_steps} if self.max_episode_steps else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.pool = self.envpool.make(self.env_id, env_type="gymnasium", num_envs=len(seeds), num_threads=envpool_threads(len(seeds)),
                                          env_seed=[int(s) & 0x7FFFFFFF for s in seeds], **kwargs)  # EnvPool takes int32 seeds
        return self.pool.reset()[0].copy()

    def step(self, actions, live):
        obs, reward, terminated, truncated, _ = self.pool.step(actions)
        return obs[live], reward[live], terminated[live], truncated[live]

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def make_members(args):
    members = EnvPoolMembers if args.env_backend == "envpool" else GymMembers
    return members(args.env_id, args.max_episode_steps, args.num_groups * args.group_size)


def collect_group_rollouts(members, agent, actor, rng, seeds, group_size, low, high, global_step, on_episode, max_steps=None):
    """Run every member of every group to termination or truncation. Members of group g are reset
    with seeds[g] (the same start state); a member that has ended waits, masked, while the others
    finish, and the policy is called once per step on the batch of live members.

    Members move in lockstep, so stopping after `max_steps` env steps (the rest of the run's budget)
    cuts every live member at the same t: a shorter time limit shared by the whole group, which keeps
    the comparison fair. Episodes cut that way are trained on but not reported as episodes."""
    M = len(seeds) * group_size
    obs = members.reset([seeds[m // group_size] for m in range(M)])
    alive = np.ones(M, bool)
    episode_return, steps = np.zeros(M), 0
    obs_buf, action_buf, reward_buf, mask_buf = [], [], [], []
    env_step_s = forward_s = 0.0
    while alive.any() and (max_steps is None or steps < max_steps):
        t0 = time.perf_counter()
        live = np.flatnonzero(alive)
        obs_norm = np.zeros((M, obs.shape[1]), np.float32)
        action = np.zeros((M, len(actor.std)), np.float32)
        obs_norm[live] = agent.obs_rms(obs[live], update=True)
        action[live] = actor.mean(obs_norm[live]) + actor.std * rng.standard_normal((len(live), len(actor.std)), dtype=np.float32)
        t1 = time.perf_counter()
        reward = np.zeros(M, np.float32)
        env_action = np.clip(action, low, high)  # the log-prob is of the unclipped sample; only the env sees this
        obs[live], reward[live], terminated, truncated = members.step(env_action, live)
        episode_return[live] += reward[live]
        for k in np.flatnonzero(terminated | truncated):
            alive[live[k]] = False
            on_episode(global_step + steps + k + 1, episode_return[live[k]], len(obs_buf) + 1)
        steps += len(live)
        t2 = time.perf_counter()
        env_step_s, forward_s = env_step_s + t2 - t1, forward_s + t1 - t0
        mask = np.zeros(M, np.float32)
        mask[live] = 1.0
        obs_buf.append(obs_norm), action_buf.append(action), reward_buf.append(reward), mask_buf.append(mask)
    rollout = GroupRollout(*(np.stack(buf) for buf in (obs_buf, action_buf, reward_buf, mask_buf)))
    return rollout, env_step_s, forward_s


def make_batch(agent, ref_agent, rollout, args, device):
    """The flat batch of every valid step: observations, actions, the rollout policy's and the
    reference policy's log-probs (one batched call each), group-relative advantages."""
    valid = rollout.mask.reshape(-1) > 0
    advantages = group_advantages(rollout.rewards, rollout.mask, args.group_size, args.adv_mode, args.gamma)
    obs = torch.from_numpy(rollout.obs.reshape(-1, rollout.obs.shape[-1])[valid]).to(device)
    actions = torch.from_numpy(rollout.actions.reshape(-1, rollout.actions.shape[-1])[valid]).to(device)
    with torch.no_grad():
        logprobs, ref_logprobs = agent.log_prob(obs, actions), ref_agent.log_prob(obs, actions)
    return {"obs": obs, "actions": actions, "logprobs": logprobs, "ref_logprobs": ref_logprobs,
            "advantages": torch.from_numpy(advantages.reshape(-1)[valid]).to(device)}


def grpo_update(agent, optimizer, batch, args):
    """`update_epochs` passes of minibatch SGD on the clipped surrogate of the group advantages,
    averaged over valid steps, plus kl_coef * k3 KL to the reference, minus ent_coef * entropy.
    Returns the last epoch's losses and the mean clip fraction, as tensors."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    batch_size = len(batch["advantages"])
    clipfracs = []
    for epoch in range(args.update_epochs):
        perm = torch.randperm(batch_size, device=batch["obs"].device)
        obs, actions, old_logprobs, ref_logprobs, advantages = (
            batch[k][perm] for k in ("obs", "actions", "logprobs", "ref_logprobs", "advantages"))
        for start in range(0, batch_size, args.minibatch_size):
            mb = slice(start, start + args.minibatch_size)
            newlogprob = agent.log_prob(obs[mb], actions[mb])
            logratio = newlogprob - old_logprobs[mb]
            ratio = logratio.exp()
            mb_adv = advantages[mb]
            pg_loss = torch.max(-mb_adv * ratio, -mb_adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)).mean()
            kl_ref = k3_kl(newlogprob, ref_logprobs[mb]).mean()
            entropy = gaussian_entropy(agent.actor_logstd).mean()
            loss = pg_loss + args.kl_coef * kl_ref - args.ent_coef * entropy

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, args.max_grad_norm, foreach=True)
            optimizer.step()
            with torch.no_grad():
                clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean())

        with torch.no_grad():  # http://joschu.net/blog/kl-approx.html
            old_approx_kl = (-logratio).mean()
            approx_kl = ((ratio - 1) - logratio).mean()
        if args.target_kl is not None and approx_kl > args.target_kl:
            break
    return {"losses/policy_loss": pg_loss.detach(), "losses/kl_ref": kl_ref.detach(), "losses/entropy": entropy.detach(),
            "losses/old_approx_kl": old_approx_kl, "losses/approx_kl": approx_kl, "losses/clipfrac": torch.stack(clipfracs).mean()}


class NumpyLearner:
    """The CPU fast path of the update. The agent's parameters, their gradients and Adam's moments
    are views of flat float32 arrays, and backprop is written out by hand: a 64-sample minibatch
    step of these small MLPs costs ~1 ms in torch (op dispatch, autograd, optimizer bookkeeping)
    and a fraction of that in numpy. It computes the same update as grpo_update up to float
    rounding (tests/test_grpo_math.py); torch stays the owner of the weights and optimizer state,
    which pull() and push() copy in and out once per iteration."""

    def __init__(self, agent, optimizer):
        self.agent, self.optimizer = agent, optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.bounds = list(itertools.pairwise(np.cumsum([0] + [p.numel() for p in self.params])))
        self.theta, self.grad, self.exp_avg, self.exp_avg_sq = (np.zeros(self.bounds[-1][1], np.float32) for _ in range(4))
        self.p, self.g = ([flat[a:b].reshape(p.shape) for (a, b), p in zip(self.bounds, self.params)] for flat in (self.theta, self.grad))
        index = {id(p): i for i, p in enumerate(self.params)}
        self.actor = [(index[id(m.weight)], index[id(m.bias)]) for m in agent.actor_mean if isinstance(m, nn.Linear)]
        self.logstd = index[id(agent.actor_logstd)]

    def pull(self):
        for (a, b), p in zip(self.bounds, self.params):
            self.theta[a:b] = p.detach().reshape(-1).numpy()
            state = self.optimizer.state.get(p) or {}
            self.exp_avg[a:b] = state["exp_avg"].reshape(-1).numpy() if state else 0.0
            self.exp_avg_sq[a:b] = state["exp_avg_sq"].reshape(-1).numpy() if state else 0.0
            self.step_count = int(state["step"]) if state else 0
        group = self.optimizer.param_groups[0]
        self.lr, self.betas, self.eps = group["lr"], group["betas"], group["eps"]

    def push(self):
        with torch.no_grad():
            for (a, b), p in zip(self.bounds, self.params):
                p.copy_(torch.from_numpy(self.theta[a:b]).view_as(p))
                self.optimizer.state[p] = {"step": torch.tensor(float(self.step_count)),
                                           "exp_avg": torch.from_numpy(self.exp_avg[a:b].copy()).view_as(p),
                                           "exp_avg_sq": torch.from_numpy(self.exp_avg_sq[a:b].copy()).view_as(p)}

    def mlp_forward(self, layers, x):
        """The MLP's output and the input of each of its layers (what backprop needs)."""
        inputs = []
        for k, (w, b) in enumerate(layers):
            inputs.append(x)
            x = x @ self.p[w].T + self.p[b]
            if k < len(layers) - 1:
                x = np.tanh(x)
        return x, inputs

    def mlp_backward(self, layers, inputs, d_out):
        """Writes the MLP's parameter gradients, given d loss / d output."""
        for k in reversed(range(len(layers))):
            w, b = layers[k]
            np.matmul(d_out.T, inputs[k], out=self.g[w])
            np.add.reduce(d_out, axis=0, out=self.g[b])
            if k:
                d_out = (d_out @ self.p[w]) * (1.0 - inputs[k] ** 2)  # tanh' = 1 - tanh^2

    def action_features(self, actions):  # what log_prob needs of the batch's actions, once per update
        return actions

    def log_prob(self, obs, actions):
        """gaussian_log_prob of the actions, and what backprop needs."""
        mean, inputs = self.mlp_forward(self.actor, obs)
        logstd = self.p[self.logstd]
        inv_std = np.exp(-logstd)
        z = (actions - mean) * inv_std
        logprob = -0.5 * np.add.reduce(z * z, axis=1) - float(logstd.sum() + 0.5 * math.log(2 * math.pi) * z.shape[1])
        return logprob, (inputs, z, inv_std, logstd.copy())  # a copy: the step after this minibatch moves logstd

    def entropy(self, cache):  # the mean gaussian_entropy
        return float((0.5 + 0.5 * math.log(2 * math.pi) + cache[3]).sum())

    def log_prob_backward(self, cache, d_logprob, d_entropy):
        inputs, z, inv_std, _ = cache
        self.g[self.logstd][:] = d_logprob @ (z * z - 1.0) + d_entropy
        self.mlp_backward(self.actor, inputs, d_logprob[:, None] * z * inv_std)

    def step(self, max_grad_norm):
        """clip_grad_norm_ and an Adam step (torch's formulas), on the flat arrays."""
        grad_norm = math.sqrt(float(np.dot(self.grad, self.grad)))
        self.grad *= min(1.0, max_grad_norm / (grad_norm + 1e-6))
        self.step_count += 1
        (beta1, beta2), t = self.betas, self.step_count
        self.exp_avg *= beta1
        self.exp_avg += (1.0 - beta1) * self.grad
        self.exp_avg_sq *= beta2
        self.exp_avg_sq += (1.0 - beta2) * self.grad * self.grad
        denom = np.sqrt(self.exp_avg_sq) / math.sqrt(1.0 - beta2**t) + self.eps
        self.theta -= (self.lr / (1.0 - beta1**t)) * self.exp_avg / denom


def grpo_update_numpy(learner, batch, args):
    """grpo_update on the NumpyLearner: the same minibatches (torch.randperm), losses and
    statistics; the gradients are written out instead of taken by autograd. Where torch.max
    would split a tie between the clipped and unclipped losses, the gradient goes to one side:
    the two differ by rounding there."""
    learner.pull()
    batch = {k: v.numpy() for k, v in batch.items()}
    batch["actions"] = learner.action_features(batch["actions"])
    batch_size, lo, hi, clipfracs = len(batch["advantages"]), 1 - args.clip_coef, 1 + args.clip_coef, []
    for epoch in range(args.update_epochs):
        perm = torch.randperm(batch_size).numpy()
        obs, actions, old_logprobs, ref_logprobs, advantages = (
            batch[k][perm] for k in ("obs", "actions", "logprobs", "ref_logprobs", "advantages"))
        for start in range(0, batch_size, args.minibatch_size):
            mb = slice(start, start + args.minibatch_size)
            newlogprob, cache = learner.log_prob(obs[mb], actions[mb])
            B = len(newlogprob)
            logratio = newlogprob - old_logprobs[mb]
            ratio = np.exp(logratio)
            mb_adv = advantages[mb]
            pg_losses, pg_losses_clipped = -mb_adv * ratio, -mb_adv * np.minimum(np.maximum(ratio, lo), hi)
            unclipped = pg_losses >= pg_losses_clipped  # where the max is the unclipped term, which has a gradient
            pg_loss = float(np.add.reduce(np.where(unclipped, pg_losses, pg_losses_clipped))) / B
            log_r = ref_logprobs[mb] - newlogprob  # k3_kl, with its clamp
            clamped_log_r = np.minimum(np.maximum(log_r, -20.0), 20.0)
            r = np.exp(clamped_log_r)
            kl_ref = float(np.add.reduce(r - clamped_log_r - 1.0)) / B

            # loss = pg_loss + kl_coef * kl_ref - ent_coef * entropy; d k3 / d logprob = 1 - r inside the clamp
            d_logprob = (np.where(unclipped, mb_adv, 0.0) * -ratio + args.kl_coef * (1.0 - r) * (log_r == clamped_log_r)) / B
            learner.log_prob_backward(cache, d_logprob.astype(np.float32), -args.ent_coef)
            learner.step(args.max_grad_norm)
            clipfracs.append(np.count_nonzero(np.abs(ratio - 1.0) > args.clip_coef) / B)

        old_approx_kl, approx_kl = float((-logratio).mean()), float(((ratio - 1) - logratio).mean())
        if args.target_kl is not None and approx_kl > args.target_kl:
            break
    learner.push()
    entropy = learner.entropy(cache)  # of the last minibatch, as grpo_update reports it
    return {"losses/policy_loss": pg_loss, "losses/kl_ref": kl_ref, "losses/entropy": entropy, "losses/old_approx_kl": old_approx_kl,
            "losses/approx_kl": approx_kl, "losses/clipfrac": float(np.mean(clipfracs))}


def main(args: Args):
    check_args(args)
    obs_space, act_space = check_env(args)
    run_dir, ckpt = open_run(args)
    if ckpt is not None and ckpt["metrics"]["completed"]:
        print(f"{run_dir} is already complete ({ckpt['metrics']['global_step']:,} steps); nothing to do")
        return
    # -- nothing has been written before this line --

    metrics = ckpt["metrics"] if ckpt else new_metrics(args, group_size=args.group_size)
    start_iteration = ckpt["iteration"] if ckpt else 0
    rec = Recorder(run_dir, metrics, resume_iteration=start_iteration)
    device, device_warning = pick_device(args)
    if device_warning:
        rec.log.warning(device_warning)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    np_rng = np.random.default_rng(args.seed)

    obs_dim, act_dim = obs_space.shape[0], act_space.shape[0]
    low, high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)
    agent = Agent(obs_dim, act_dim, args.hidden_sizes, args.clip_obs, args.norm_obs).to(device)
    ref_agent = copy.deepcopy(agent).requires_grad_(False)
    # fused Adam: one kernel for all parameters, ~20% off each minibatch step of these small nets
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    if ckpt:
        agent.load_state_dict(ckpt["agent"])
        ref_agent.load_state_dict(ckpt["ref_agent"])
        optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng_states(ckpt["rng"], np_rng)
        rec.log.info(f"resuming {run_dir} from step {metrics['global_step']:,} (iteration {start_iteration})")
    else:
        rec.log.info(f"run directory {run_dir}; {args.num_groups} groups of {args.group_size} episodes per iteration on {device}")
    learner = NumpyLearner(agent, optimizer) if args.update_impl == "numpy" and device.type == "cpu" else None

    members = make_members(args)
    eval_seeds = [1_000_000 * (1 + args.seed) + k for k in range(args.eval_episodes)]

    def make_eval_env(render_mode):
        return make_env(args.env_id, args.max_episode_steps, render_mode)()

    def act_deterministic(obs):
        return np.clip(actor.mean(agent.obs_rms(obs)), low, high)

    def save(name):
        atomic_torch_save(run_dir / "checkpoints" / name, {
            "agent": agent.state_dict(), "ref_agent": ref_agent.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": rng_states(np_rng), "iteration": iteration, "global_step": global_step, "metrics": metrics, "args": asdict(args)})

    global_step, iteration = metrics["global_step"], start_iteration
    wall_time_before, t_start, steps_at_start = metrics["wall_time_s"], time.perf_counter(), global_step
    last_ckpt_step, last_eval_step = global_step, (metrics["eval"]["global_step"] or [0])[-1]
    while global_step < args.total_timesteps:
        iteration += 1
        t_iter = time.perf_counter()
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - global_step / args.total_timesteps) * args.learning_rate
        if args.ref_update_every and (iteration - 1) % args.ref_update_every == 0:
            ref_agent.load_state_dict(agent.state_dict())

        actor = NumpyActor(agent)
        rollout, env_step_s, forward_s = collect_group_rollouts(
            members, agent, actor, np_rng, group_seeds(args.seed, iteration, args.num_groups), args.group_size, low, high,
            global_step, rec.episode, max_steps=args.total_timesteps - global_step)
        global_step += rollout.num_steps
        t_rollout = time.perf_counter()
        batch = make_batch(agent, ref_agent, rollout, args, device)

        # ---- update ----
        stats = grpo_update_numpy(learner, batch, args) if learner else grpo_update(agent, optimizer, batch, args)
        stats = {k: float(v) for k, v in stats.items()}
        if not all(math.isfinite(v) for v in stats.values()) or not all(torch.isfinite(p).all() for p in agent.parameters()):
            metrics["status"] = "diverged"
            rec.log.error(f"NaN/inf in the losses or parameters at iteration {iteration}; stopped, keeping the checkpoint of step {last_ckpt_step:,}")
            rec.close()
            raise Diverged(f"training diverged (NaN/inf) at step {global_step:,}; {run_dir / 'checkpoints' / 'latest.pt'} holds "
                           f"step {last_ckpt_step:,}: lower --learning-rate or --max-grad-norm")
        group_returns = rollout.returns.reshape(args.num_groups, args.group_size)
        adv = batch["advantages"]
        stats.update({"charts/group_return_mean": float(group_returns.mean()), "charts/group_return_std": float(group_returns.std(1).mean()),
                      "charts/batch_steps": rollout.num_steps, "losses/advantage_mean": float(adv.mean()),
                      "losses/advantage_std": float(adv.std()), "losses/advantage_abs_max": float(adv.abs().max())})
        t_update = time.perf_counter()

        # ---- evaluation, logging, checkpoints ----
        eval_return = None
        final = global_step >= args.total_timesteps
        if args.eval_every and (global_step - last_eval_step >= args.eval_every or final):
            last_eval_step = global_step
            actor = NumpyActor(agent)
            returns_eval = evaluate(make_eval_env, act_deterministic, eval_seeds)
            eval_return = float(returns_eval.mean())
            if rec.evaluation(global_step, returns_eval):
                save("best.pt")
            if args.capture_video:
                try:
                    best_seed = eval_seeds[int(returns_eval.argmax())]
                    record_video(make_eval_env, act_deterministic, best_seed, run_dir / "videos" / f"eval-step{global_step:09d}.mp4")
                except Exception as e:  # no renderer here: keep training, say why once
                    rec.log.warning(f"video capture failed ({type(e).__name__}: {e}); continuing without videos")
                    args.capture_video = False
        t_eval = time.perf_counter()

        elapsed = t_eval - t_start
        metrics["global_step"], metrics["wall_time_s"] = global_step, wall_time_before + elapsed
        metrics["sps"] = global_step / metrics["wall_time_s"]
        sps = (global_step - steps_at_start) / elapsed
        rec.scalars(global_step, {**stats, "charts/learning_rate": optimizer.param_groups[0]["lr"], "charts/SPS": sps})
        if final:
            metrics["completed"], metrics["status"] = True, "completed"
        if final or (args.checkpoint_every and global_step - last_ckpt_step >= args.checkpoint_every):
            last_ckpt_step = global_step
            save("latest.pt")
        rec.flush()
        rec.progress(global_step, args.total_timesteps, sps, eval_return)
        t_end = time.perf_counter()
        rec.timing({"iteration": iteration, "global_step": global_step, "time_s": t_end - t_iter, "rollout_s": t_rollout - t_iter,
                    "env_step_s": env_step_s, "policy_forward_s": forward_s, "update_s": t_update - t_rollout,
                    "eval_s": t_eval - t_update, "io_s": t_end - t_eval, "sps": rollout.num_steps / (t_end - t_iter)})

    members.close()
    rec.log.info(f"done: {global_step:,} steps in {metrics['wall_time_s']:,.0f}s ({metrics['sps']:,.0f} SPS); "
                 f"best eval return {metrics['best_eval_return']}")
    rec.close()


if __name__ == "__main__":
    cli(main, Args)
