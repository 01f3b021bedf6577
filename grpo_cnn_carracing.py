"""GRPO on pixels: CarRacing from frames, a critic-free policy gradient with same-track groups.

grpo_continuous.py with the observation pipeline and the network of ppo_cnn_carracing.py (frame
skip, grayscale, resize, frame stack as wrappers; uint8 frames scaled inside a configurable CNN; no
observation normalization) and its Beta policy, which fits CarRacing's asymmetric action bounds.
CarRacing generates its track from the reset seed, so the members of a group, reset with one seed,
drive the same track. Members step in `--env-workers` processes (env frames are the cost here), and
the CNN runs once per step on the batch of live members. `--env-backend envpool` steps the members
in EnvPool's C++ CarRacing instead, one pool per member made with its group's seed (EnvPool's reset
takes no seed), the preprocessing on the batch in numpy; evaluation always runs gymnasium's env.
The algorithm is grpo_continuous.py's:

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
as in DeepSeekMath. Evaluation, run layout and resume are grpo_continuous.py's, as a diff shows.

Run:  python grpo_cnn_carracing.py --env-id CarRacing-v3 --group-size 8
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
import multiprocessing
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
    """the name of this experiment (part of the run directory's name; default grpo_cnn_carracing_g{group_size})"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch and the environments)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, train on CUDA when it is available (falls back to CPU with a warning)"""
    torch_threads: int = 1
    """torch CPU threads for acting and evaluation (1 is fastest for a few frames at a time; 0 keeps torch's default)"""
    update_threads: int = 1
    """torch CPU threads for the update, while the envs wait for it (0: one per CPU core; ~1.6x faster on an idle machine, several times slower when another process holds a core)"""
    runs_dir: str = "runs"
    """where run directories are created: {runs_dir}/{env_id}__{exp_name}__seed{seed}"""
    resume: bool = False
    """continue the run in the run directory from checkpoints/latest.pt (starts fresh if there is none)"""

    # Environment
    env_id: str = "CarRacing-v3"
    """the id of the gymnasium environment (bounded continuous actions, RGB image observations, episodes that end)"""
    total_timesteps: int = 1_000_000
    """total environment steps of the experiment (the last iteration is cut short to fit it)"""
    env_workers: int = 0
    """processes that step the group members on the gymnasium backend (0: one per CPU core, at most one per member; 1: in this process)"""
    env_backend: Literal["gymnasium", "envpool"] = "gymnasium"
    """the training envs' implementation: `gymnasium`, or `envpool` (C++, batched; Linux: pip install envpool); evaluation and videos always run gymnasium's env of the same id"""
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
    adv_mode: Literal["episode", "step"] = "step"
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


class FrameSkip(gym.Wrapper):
    """Repeat the action `skip` frames and sum their rewards; stop early at the episode's end. The
    video frame rate is divided by `skip`, so evaluation videos (one frame per step) play in real time."""

    def __init__(self, env, skip):
        super().__init__(env)
        self.skip = skip
        self.metadata = {**env.metadata, "render_fps": env.metadata.get("render_fps", 50) / skip}

    def step(self, action):
        total_reward = 0.0
        for _ in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total_reward += float(reward)
            if terminated or truncated:
                break
        return obs, total_reward, terminated, truncated, info


class MaxNegativeSteps(gym.Wrapper):
    """Truncate the episode after `max_steps` consecutive steps of negative reward: on CarRacing a car
    that has left the track only loses 0.1 a frame until the time limit, so those frames teach little."""

    def __init__(self, env, max_steps):
        super().__init__(env)
        self.max_steps, self.negative_steps = max_steps, 0

    def reset(self, **kwargs):
        self.negative_steps = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.negative_steps = self.negative_steps + 1 if reward < 0 else 0
        return obs, reward, terminated, truncated or self.negative_steps >= self.max_steps, info


def area_weights(n_in, n_out):
    """(n_out, n_in) weights of area resampling: output pixel i averages the input interval it covers."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo, hi, j = edges[:-1, None], edges[1:, None], np.arange(n_in)[None]
    return (np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None) / (hi - lo)).astype(np.float32)


def resize_frame(frame, rows, cols):
    """(H, W, C) uint8 -> (h, w, C) uint8 with the area weights rows (h, H) and cols (w, W). numpy, not
    torch or OpenCV: env workers are forked and OpenCV is not a dependency."""
    out = np.tensordot(cols, np.tensordot(rows, frame.astype(np.float32), axes=(1, 0)), axes=(1, 1))  # (w, h, C)
    return np.rint(out.transpose(1, 0, 2)).astype(np.uint8)


def preprocessed_shape(args, frame_shape):
    """The observation shape after the wrappers: (frame_stack, height, width, channels)."""
    height, width = args.resize or frame_shape[:2]
    return (args.frame_stack, height, width, 1 if args.grayscale else frame_shape[2])


def make_env(args, render_mode=None):
    def thunk():
        env = gym.make(args.env_id, max_episode_steps=args.max_episode_steps, **({"render_mode": render_mode} if render_mode else {}))
        env = FrameSkip(env, args.frame_skip)
        if args.max_negative_steps:
            env = MaxNegativeSteps(env, args.max_negative_steps)
        if args.grayscale:
            env = gym.wrappers.GrayscaleObservation(env, keep_dim=True)
        if args.resize:
            shape = preprocessed_shape(args, env.observation_space.shape)[1:]
            rows, cols = area_weights(env.observation_space.shape[0], shape[0]), area_weights(env.observation_space.shape[1], shape[1])
            env = gym.wrappers.TransformObservation(env, lambda frame: resize_frame(frame, rows, cols),
                                                    gym.spaces.Box(0, 255, shape, np.uint8))
        return gym.wrappers.FrameStackObservation(env, args.frame_stack)

    return thunk


def grayscale_frames(frames):
    """(..., H, W, 3) uint8 -> (..., H, W, 1) uint8 with gymnasium's GrayscaleObservation formula
    (weights 0.2125, 0.7154, 0.0721 in float64, truncated), so both backends feed the network the same
    bytes: the same products added in the same order, ~9x faster than np.sum over a 3-long axis."""
    x = frames.astype(np.float64)
    return (x[..., 0:1] * 0.2125 + x[..., 1:2] * 0.7154 + x[..., 2:3] * 0.0721).astype(np.uint8)


class FramePipeline:
    """make_env's observation wrappers after the frame skip (grayscale, resize, frame stack) on a batch
    of envs, in numpy: the EnvPool backend's frames come as one (N, H, W, 3) array."""

    def __init__(self, args, num_envs, frame_shape):
        self.args, self.frame_shape, self.rows, self.cols = args, frame_shape, None, None
        shape = preprocessed_shape(args, frame_shape)
        if args.resize:
            self.rows, self.cols = area_weights(frame_shape[0], shape[1]), area_weights(frame_shape[1], shape[2])
        self.stack = np.zeros((num_envs, *shape), np.uint8)

    def frames(self, raw):
        out = grayscale_frames(raw) if self.args.grayscale else raw
        if self.rows is not None:  # frame by frame: the exact arithmetic of the gymnasium wrapper
            out = np.stack([resize_frame(frame, self.rows, self.cols) for frame in out])
        return out

    def reset(self, ids, raw):
        self.stack[ids] = self.frames(raw)[:, None]  # FrameStackObservation starts with the first frame repeated

    def push(self, ids, raw):
        self.stack[ids] = np.concatenate([self.stack[ids, 1:], self.frames(raw)[:, None]], axis=1)

def check_env(args):
    """Make one env to check its spaces before anything is written. Returns the preprocessed
    observation shape and the action space."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            env = gym.make(args.env_id)
        except Exception as e:  # unknown id (gym.error.Error), a missing dependency, a broken env
            raise UsageError(f"cannot make env {args.env_id!r}: {str(e).splitlines()[0]} (pass a registered gymnasium id such as --env-id CarRacing-v3)")
    obs_space, act_space, spec = env.observation_space, env.action_space, env.spec
    env.close()
    if not isinstance(act_space, gym.spaces.Box):
        raise UsageError(f"{args.env_id} has a {type(act_space).__name__} action space; this script needs continuous (Box) "
                         "actions: use an env such as CarRacing-v3 (continuous by default)")
    if not (np.isfinite(act_space.low).all() and np.isfinite(act_space.high).all()):
        raise UsageError(f"{args.env_id} has unbounded actions (low {act_space.low}, high {act_space.high}); a Beta policy needs "
                         "finite bounds")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 3 or obs_space.shape[2] != 3 or obs_space.dtype != np.uint8:
        raise UsageError(f"{args.env_id} has observations of shape {getattr(obs_space, 'shape', obs_space)}; this CNN script "
                         "needs RGB images (height, width, 3) of uint8: for flat vectors use grpo_continuous.py")
    if args.env_backend == "envpool":
        check_envpool_env(args, obs_space, act_space)
    if args.max_episode_steps is None and (spec is None or spec.max_episode_steps is None):
        raise UsageError(f"{args.env_id} has no time limit and GRPO compares whole episodes: pass --max-episode-steps")
    obs_shape = preprocessed_shape(args, obs_space.shape)
    size = np.array(obs_shape[1:3])
    for kernel, stride in zip(args.cnn_kernel_sizes, args.cnn_strides):
        size = (size - kernel) // stride + 1
    if size.min() < 1:
        raise UsageError(f"the CNN's convolutions (--cnn-kernel-sizes {args.cnn_kernel_sizes}, --cnn-strides {args.cnn_strides}) "
                         f"shrink a {obs_shape[1]}x{obs_shape[2]} frame to nothing: use a larger --resize or smaller kernels")
    return obs_shape, act_space


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
    for name in ("total_timesteps", "num_groups", "minibatch_size", "update_epochs", "eval_episodes", "frame_skip", "frame_stack",
                 "cnn_feature_size"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("eval_every", "checkpoint_every", "torch_threads", "update_threads", "ref_update_every", "kl_coef", "ent_coef", "env_workers"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("max_episode_steps", "max_negative_steps"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.resize is not None and min(args.resize) <= 0:
        raise UsageError(f"--resize needs a positive height and width, got {args.resize}")
    cnn = (args.cnn_channels, args.cnn_kernel_sizes, args.cnn_strides)
    if not args.cnn_channels or len(set(map(len, cnn))) != 1 or min(min(c) for c in cnn) <= 0:
        raise UsageError(f"--cnn-channels, --cnn-kernel-sizes and --cnn-strides need one positive entry per convolution each, got "
                         f"{args.cnn_channels}, {args.cnn_kernel_sizes}, {args.cnn_strides}")
    if not 0 < args.gamma <= 1:
        raise UsageError(f"--gamma must be in (0, 1], got {args.gamma}")
    for name in ("learning_rate", "clip_coef", "max_grad_norm"):
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
    """uint8 frames (B, stack, H, W, C) -> features (B, feature_size): the frames and their channels
    become the input channels, scaled to [0, 1] here (the buffers hold bytes), then convolutions with
    ReLU, flattened, and a linear layer with ReLU. The defaults are the Nature-DQN trunk."""

    def __init__(self, obs_shape, channels, kernel_sizes, strides, feature_size):
        super().__init__()
        layers, last = [], obs_shape[0] * obs_shape[3]
        for out, kernel, stride in zip(channels, kernel_sizes, strides):
            layers += [layer_init(nn.Conv2d(last, out, kernel, stride)), nn.ReLU()]
            last = out
        # channels-last (NHWC) weights and input: oneDNN's CPU convolutions, and above all their backward
        # (most of the update), run about a third faster in that layout than in NCHW
        self.convs = nn.Sequential(*layers, nn.Flatten()).to(memory_format=torch.channels_last)
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, obs_shape[0] * obs_shape[3], *obs_shape[1:3])).shape[1]
        self.fc = nn.Sequential(layer_init(nn.Linear(flat, feature_size)), nn.ReLU())

    def forward(self, obs):
        B, S, H, W, C = obs.shape  # -> (B, S * C, H, W), channel s * C + c, as an NHWC view of the bytes
        x = obs.permute(0, 2, 3, 1, 4).reshape(B, H, W, S * C).permute(0, 3, 1, 2).float() / 255.0
        return self.fc(self.convs(x))


class Agent(nn.Module):
    """The policy alone: GRPO has no critic."""

    def __init__(self, obs_shape, act_dim, args):
        super().__init__()
        self.actor_trunk = CNNFeatureExtractor(obs_shape, args.cnn_channels, args.cnn_kernel_sizes, args.cnn_strides,
                                               args.cnn_feature_size)
        self.actor_params = mlp(args.cnn_feature_size, args.hidden_sizes, 2 * act_dim, out_std=0.01)

    def get_actor_params(self, obs):
        return self.actor_params(self.actor_trunk(obs))

    def log_prob(self, obs, actions):
        return beta_log_prob(actions, *beta_params(self.get_actor_params(obs)))


def in_chunks(fn, *xs, size=1024):
    """fn over the rows of the tensors xs, `size` rows at a time: a whole rollout of frames at once
    would hold gigabytes of activations."""
    return torch.cat([fn(*(x[i : i + size] for x in xs)) for i in range(0, len(xs[0]), size)])

BETA_EPS = 1e-6  # x is kept this far from 0 and 1: float32 sampling can round to the edge, where log x = -inf


def beta_params(out):
    """The actor's 2 * act_dim outputs -> alpha, beta = softplus + 1: both > 1, so the density is
    unimodal and concave (Chou et al.)."""
    alpha, beta = nn.functional.softplus(out).chunk(2, dim=-1)
    return alpha + 1.0, beta + 1.0


def beta_log_prob(x, alpha, beta):
    """log Beta(x; alpha, beta), summed over action dimensions. This is the log-prob of x in
    (0, 1), not of the env action low + (high - low) x: the affine map's Jacobian is a constant
    that cancels in the PPO ratio pi_new / pi_old."""
    x = x.clamp(BETA_EPS, 1.0 - BETA_EPS)
    log_norm = torch.lgamma(alpha + beta) - torch.lgamma(alpha) - torch.lgamma(beta)
    return ((alpha - 1.0) * torch.log(x) + (beta - 1.0) * torch.log1p(-x) + log_norm).sum(-1)


def beta_entropy(alpha, beta):
    total, dg = alpha + beta, torch.digamma
    log_b = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(total)
    return (log_b - (alpha - 1.0) * dg(alpha) - (beta - 1.0) * dg(beta) + (total - 2.0) * dg(total)).sum(-1)


def to_env_action(x, low, high):
    return low + (high - low) * x


class RolloutActor:
    """The actor as the rollout and evaluation call it: uint8 frames in, numpy out. Actions are drawn
    from the numpy generator, as in the MLP scripts, so the run's randomness is in one checkpointed
    generator. The CNN needs torch (a numpy snapshot, as for the MLPs, would be slower)."""

    def __init__(self, agent: Agent, device):
        self.agent, self.device = agent, device

    def params(self, x):
        with torch.no_grad():
            alpha, beta = beta_params(self.agent.get_actor_params(torch.from_numpy(x).to(self.device)))
        return alpha.cpu().numpy().astype(np.float64), beta.cpu().numpy().astype(np.float64)

    def sample(self, x, rng):
        alpha, beta = self.params(x)
        return np.clip(rng.beta(alpha, beta), BETA_EPS, 1.0 - BETA_EPS).astype(np.float32)

    def mean(self, x):  # the deterministic (evaluation) action in (0, 1): the Beta mean
        alpha, beta = self.params(x)
        return (alpha / (alpha + beta)).astype(np.float32)


def member_command(envs, command, data):
    """`reset` {member: seed} -> {member: first obs}, or `step` {member: env action} ->
    {member: (obs, reward, terminated, truncated)}, on the member envs {member: env}."""
    if command == "reset":
        return {m: envs[m].reset(seed=seed)[0] for m, seed in data.items()}
    return {m: envs[m].step(action)[:4] for m, action in data.items()}


def member_worker(conn, args, members, parent_conns):
    # A forked worker inherits the parent's ends of every pipe made so far, its own included: close
    # them, so that when the parent dies (kill -9) recv() sees EOF and the worker exits, not lingers.
    for parent_conn in parent_conns:
        parent_conn.close()
    envs = {m: make_env(args)() for m in members}
    try:
        while (message := conn.recv()) is not None:
            conn.send(member_command(envs, *message))
    except (EOFError, BrokenPipeError):
        pass
    for env in envs.values():
        env.close()


class MemberPool:
    """The group members' envs, spread over `num_workers` processes (member m in worker m % W; 1: all in
    this process). Unlike a vector env it steps only the members it is given, so a member that has
    ended costs nothing while its group finishes, and it never resets on its own."""

    def __init__(self, args, num_members, num_workers):
        self.num_members, self.envs, self.parts, self.conns, self.procs = num_members, {}, [], [], []
        if num_workers <= 1:
            self.envs = {m: make_env(args)() for m in range(num_members)}
            return
        ctx = multiprocessing.get_context("fork")
        self.parts = [range(w, num_members, num_workers) for w in range(num_workers)]
        for part in self.parts:
            conn, child_conn = ctx.Pipe()
            proc = ctx.Process(target=member_worker, args=(child_conn, args, part, [*self.conns, conn]), daemon=True)
            proc.start()
            child_conn.close()
            self.conns.append(conn), self.procs.append(proc)

    def __call__(self, command, data):
        if not self.conns:
            return member_command(self.envs, command, data)
        for conn, part in zip(self.conns, self.parts):
            conn.send((command, {m: data[m] for m in part if m in data}))
        return {m: result for conn in self.conns for m, result in conn.recv().items()}

    def close(self):
        for env in self.envs.values():
            env.close()
        for conn, proc in zip(self.conns, self.procs):
            conn.send(None)
            proc.join()


def available_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class EnvPoolMembers:
    """The `--env-backend envpool` group members, with MemberPool's interface: one EnvPool of one env per
    member, made anew at each reset with the member's group seed. EnvPool seeds an env when its pool is
    made and its reset takes no seed, so this is how a group's members start on one track, as with
    gymnasium (making a pool takes about a millisecond). make_env's wrappers run on the batch in numpy;
    the members' pools step in parallel (send to all, then receive from all)."""

    def __init__(self, args, num_members):
        import envpool

        self.envpool, self.args, self.num_members, self.pools, self.pipeline = envpool, args, num_members, {}, None
        self.negative_steps = np.zeros(num_members, np.int64)

    def __call__(self, command, data):
        members = np.fromiter(data, np.int64, len(data))
        if command == "reset":
            raw = []
            for m, seed in data.items():
                if m in self.pools:
                    self.pools[m].close()
                kwargs = {"max_episode_steps": self.args.max_episode_steps} if self.args.max_episode_steps else {}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.pools[m] = self.envpool.make(self.args.env_id, env_type="gymnasium", num_envs=1, num_threads=1,
                                                      seed=int(seed) % (2**31 - 1), **kwargs)  # EnvPool seeds are int32
                raw.append(self.pools[m].reset()[0][0])
            if self.pipeline is None:
                self.pipeline = FramePipeline(self.args, self.num_members, raw[0].shape)
            self.pipeline.reset(members, np.stack(raw))
            self.negative_steps[members] = 0
            return {m: self.pipeline.stack[m].copy() for m in data}
        last = np.zeros((len(members), *self.pipeline.frame_shape), np.uint8)
        reward, terminated, truncated = np.zeros(len(members)), np.zeros(len(members), bool), np.zeros(len(members), bool)
        live = range(len(members))
        for _ in range(self.args.frame_skip):  # FrameSkip: a member that ends stops there
            for k in live:
                self.pools[members[k]].send(np.asarray(data[members[k]], np.float32)[None])
            for k in live:
                raw, r, term, trunc, _ = self.pools[members[k]].recv()
                last[k], reward[k], terminated[k], truncated[k] = raw[0], reward[k] + float(r[0]), term[0], trunc[0]
            live = [k for k in live if not (terminated[k] or truncated[k])]
            if not live:
                break
        if self.args.max_negative_steps:
            self.negative_steps[members] = np.where(reward < 0, self.negative_steps[members] + 1, 0)
            truncated |= self.negative_steps[members] >= self.args.max_negative_steps
        self.pipeline.push(members, last)
        return {m: (self.pipeline.stack[m].copy(), reward[k], bool(terminated[k]), bool(truncated[k])) for k, m in enumerate(members)}

    def close(self):
        for pool in self.pools.values():
            pool.close()
        self.pools = {}


def make_member_pool(args, num_members):
    if args.env_backend == "envpool":
        return EnvPoolMembers(args, num_members)
    return MemberPool(args, num_members, min(args.env_workers or os.cpu_count() or 1, num_members))


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


def collect_group_rollouts(envs, agent, actor, rng, seeds, group_size, low, high, global_step, on_episode, max_steps=None):
    """Run every member of every group to termination or truncation. Members of group g are reset
    with seeds[g] (the same start state: on CarRacing the same track); a member that has ended waits,
    masked, while the others finish, and the policy is called once per step on the batch of live
    members, whose envs then step in parallel (`envs` is a MemberPool).

    Members move in lockstep, so stopping after `max_steps` env steps (the rest of the run's budget)
    cuts every live member at the same t: a shorter time limit shared by the whole group, which keeps
    the comparison fair. Episodes cut that way are trained on but not reported as episodes."""
    M = envs.num_members
    first_obs = envs("reset", {m: seeds[m // group_size] for m in range(M)})
    obs = np.stack([first_obs[m] for m in range(M)])
    alive = np.ones(M, bool)
    episode_return, steps = np.zeros(M), 0
    obs_buf, action_buf, reward_buf, mask_buf = [], [], [], []
    env_step_s = forward_s = 0.0
    while alive.any() and (max_steps is None or steps < max_steps):
        t0 = time.perf_counter()
        live = np.flatnonzero(alive)
        frames = np.zeros_like(obs)  # uint8, zero for members that have ended
        action = np.zeros((M, len(low)), np.float32)
        frames[live] = obs[live]
        action[live] = actor.sample(frames[live], rng)
        t1 = time.perf_counter()
        reward = np.zeros(M, np.float32)
        env_action = to_env_action(action, low, high)
        results = envs("step", {m: env_action[m] for m in live})
        for m in live:
            obs[m], reward[m], terminated, truncated = results[m]
            steps += 1
            episode_return[m] += reward[m]
            if terminated or truncated:
                alive[m] = False
                on_episode(global_step + steps, episode_return[m], len(obs_buf) + 1)
        t2 = time.perf_counter()
        env_step_s, forward_s = env_step_s + t2 - t1, forward_s + t1 - t0
        mask = np.zeros(M, np.float32)
        mask[live] = 1.0
        obs_buf.append(frames), action_buf.append(action), reward_buf.append(reward), mask_buf.append(mask)
    rollout = GroupRollout(*(np.stack(buf) for buf in (obs_buf, action_buf, reward_buf, mask_buf)))
    return rollout, env_step_s, forward_s


def make_batch(agent, ref_agent, rollout, args, device):
    """The flat batch of every valid step: observations, actions, the rollout policy's and the
    reference policy's log-probs (one batched call each), group-relative advantages."""
    valid = rollout.mask.reshape(-1) > 0
    advantages = group_advantages(rollout.rewards, rollout.mask, args.group_size, args.adv_mode, args.gamma)
    obs = torch.from_numpy(rollout.obs.reshape(-1, *rollout.obs.shape[2:])[valid]).to(device)
    actions = torch.from_numpy(rollout.actions.reshape(-1, rollout.actions.shape[-1])[valid]).to(device)
    with torch.no_grad():
        logprobs, ref_logprobs = in_chunks(agent.log_prob, obs, actions), in_chunks(ref_agent.log_prob, obs, actions)
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
            alpha, beta = beta_params(agent.get_actor_params(obs[mb]))
            newlogprob = beta_log_prob(actions[mb], alpha, beta)
            logratio = newlogprob - old_logprobs[mb]
            ratio = logratio.exp()
            mb_adv = advantages[mb]
            pg_loss = torch.max(-mb_adv * ratio, -mb_adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)).mean()
            kl_ref = k3_kl(newlogprob, ref_logprobs[mb]).mean()
            entropy = beta_entropy(alpha, beta).mean()
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


def env_rate(args, num_steps):
    """The raw rate of the group members `main` builds for `args` (backend, --num-groups x --group-size,
    --env-workers, preprocessing), stepped with uniform random actions for `num_steps` agent steps of
    all members together, in the unit of the run's SPS: agent steps per second. A member that ends is
    reset at once, so every member steps all the time: the yardstick of the training speed."""
    check_args(args)
    _, act_space = check_env(args)
    num_members, rng = args.num_groups * args.group_size, np.random.default_rng(args.seed)
    seeds = group_seeds(args.seed, 1, args.num_groups)
    envs = make_member_pool(args, num_members)
    try:
        envs("reset", {m: seeds[m // args.group_size] for m in range(num_members)})
        steps, t0 = 0, time.perf_counter()
        while steps < num_steps:
            actions = rng.uniform(act_space.low, act_space.high, (num_members, act_space.shape[0])).astype(np.float32)
            results = envs("step", dict(enumerate(actions)))
            steps += num_members
            ended = {m: seeds[m // args.group_size] for m, (_, _, terminated, truncated) in results.items() if terminated or truncated}
            if ended:
                envs("reset", ended)
        return steps / (time.perf_counter() - t0)
    finally:
        envs.close()


def main(args: Args):
    check_args(args)
    obs_shape, act_space = check_env(args)
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
    # The envs wait during the update, so on an idle machine it may use every core (--update-threads 0). Acting stays on
    # --torch-threads: a few frames gain nothing from threads, and waiting threads would spin on the env workers' cores.
    act_threads, update_threads = torch.get_num_threads(), args.update_threads or available_cores()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    np_rng = np.random.default_rng(args.seed)

    act_dim = act_space.shape[0]
    low, high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)
    agent = Agent(obs_shape, act_dim, args).to(device)
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

    # Members never autoreset (each runs one episode per iteration), so a pool of plain envs, not a vector env.
    num_members = args.num_groups * args.group_size
    envs = make_member_pool(args, num_members)
    eval_seeds = [1_000_000 * (1 + args.seed) + k for k in range(args.eval_episodes)]

    def make_eval_env(render_mode):
        return make_env(args, render_mode)()

    def act_deterministic(obs):
        return to_env_action(actor.mean(obs), low, high)

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

        actor = RolloutActor(agent, device)
        rollout, env_step_s, forward_s = collect_group_rollouts(
            envs, agent, actor, np_rng, group_seeds(args.seed, iteration, args.num_groups), args.group_size, low, high,
            global_step, rec.episode, max_steps=args.total_timesteps - global_step)
        global_step += rollout.num_steps
        t_rollout = time.perf_counter()
        torch.set_num_threads(update_threads)
        batch = make_batch(agent, ref_agent, rollout, args, device)

        # ---- update ----
        stats = grpo_update(agent, optimizer, batch, args)
        stats = {k: float(v) for k, v in stats.items()}
        if not all(math.isfinite(v) for v in stats.values()) or not all(torch.isfinite(p).all() for p in agent.parameters()):
            metrics["status"] = "diverged"
            rec.log.error(f"NaN/inf in the losses or parameters at iteration {iteration}; stopped, keeping the checkpoint of step {last_ckpt_step:,}")
            rec.close()
            envs.close()
            raise Diverged(f"training diverged (NaN/inf) at step {global_step:,}; {run_dir / 'checkpoints' / 'latest.pt'} holds "
                           f"step {last_ckpt_step:,}: lower --learning-rate or --max-grad-norm")
        group_returns = rollout.returns.reshape(args.num_groups, args.group_size)
        adv = batch["advantages"]
        stats.update({"charts/group_return_mean": float(group_returns.mean()), "charts/group_return_std": float(group_returns.std(1).mean()),
                      "charts/batch_steps": rollout.num_steps, "losses/advantage_mean": float(adv.mean()),
                      "losses/advantage_std": float(adv.std()), "losses/advantage_abs_max": float(adv.abs().max())})
        torch.set_num_threads(act_threads)
        t_update = time.perf_counter()

        # ---- evaluation, logging, checkpoints ----
        eval_return = None
        final = global_step >= args.total_timesteps
        if args.eval_every and (global_step - last_eval_step >= args.eval_every or final):
            last_eval_step = global_step
            actor = RolloutActor(agent, device)
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

    envs.close()
    rec.log.info(f"done: {global_step:,} steps in {metrics['wall_time_s']:,.0f}s ({metrics['sps']:,.0f} SPS); "
                 f"best eval return {metrics['best_eval_return']}")
    rec.close()


if __name__ == "__main__":
    cli(main, Args)
