"""PPO on pixels: CarRacing from frames, a configurable CNN and a Beta policy, in one file.

ppo_beta_continuous.py with an observation pipeline and a network for images, and nothing else:
- preprocessing as gymnasium wrappers, the same in training and evaluation: `--frame-skip` (action
  repeat, rewards summed), `--grayscale`, `--resize`, `--frame-stack`, and an optional early end
  after `--max-negative-steps`. Frames stay uint8 from the env to the network, which scales them to
  [0, 1]: the rollout buffer holds bytes, never float32 frames;
- `CNNFeatureExtractor`, by default the Nature-DQN trunk (Mnih et al., Nature 2015), under separate
  actor and critic MLP heads; the heads share one trunk unless `--no-shared-trunk`;
- no observation normalization (pixels are scaled, not standardized); reward scaling as before.
- `--env-backend envpool`: the training envs are EnvPool's C++ CarRacing, batched, with the same
  preprocessing done on the batch in numpy and gymnasium's SAME_STEP autoreset (`EnvPoolVectorEnv`);
  evaluation and videos always run gymnasium's env of the same id.
The Beta policy (Chou, Maturana, Scherer, ICML 2017) fits CarRacing's asymmetric bounds (steer
[-1, 1], gas and brake [0, 1]) with all its mass inside them. PPO, GAE with correct time limits,
SAME_STEP autoreset, the run layout and resume are ppo_beta_continuous.py's, as a diff shows.

Run:  python ppo_cnn_carracing.py --env-id CarRacing-v3
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
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run directory's name)"""
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
    """the id of the gymnasium environment (continuous actions with finite bounds, RGB image observations)"""
    total_timesteps: int = 1_000_000
    """total environment steps of the experiment"""
    num_envs: int = 8
    """the number of parallel environments"""
    vector_mode: Literal["auto", "sync", "async"] = "auto"
    """gymnasium vector env: `sync` steps envs in this process, `async` in one subprocess each, `auto` async if --num-envs > 1"""
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
    num_steps: int = 256
    """the number of steps to run in each environment per policy rollout"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    anneal_lr: bool = True
    """toggle linear annealing of the learning rate to zero"""
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

    # Evaluation, checkpoints
    eval_every: int = 50_000
    """env steps between evaluations of the deterministic policy (0 disables evaluation)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    capture_video: bool = True
    """film the best episode of each evaluation to videos/*.mp4"""
    checkpoint_every: int = 25_000
    """env steps between checkpoints/latest.pt (0: only the final one, which is always written)"""

    # Filled in at runtime
    batch_size: int = 0
    """the batch size (computed at runtime: num_envs * num_steps)"""
    minibatch_size: int = 0
    """the mini-batch size (computed at runtime: batch_size // num_minibatches)"""
    num_iterations: int = 0
    """the number of iterations (computed at runtime: total_timesteps // batch_size)"""


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


def available_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def envpool_threads(num_envs):
    return max(1, min(num_envs, available_cores()))


class EnvPoolVectorEnv:
    """The `--env-backend envpool` training envs: EnvPool's batched C++ env behind the part of the
    gymnasium vector env API that collect_rollout uses, with make_env's wrappers done on the batch and
    gymnasium's SAME_STEP autoreset. EnvPool's own autoreset is NEXT_STEP-like (the step after a done
    returns the reset frame, reward 0, action ignored), so an env that ends is not stepped again in its
    frame skip, its final observation goes to info["final_obs"], and it is reset at once
    (`reset(env_ids)` resets just those envs; their next step is a real one)."""

    def __init__(self, args, num_envs):
        import envpool

        self.envpool, self.args, self.num_envs, self.pool = envpool, args, num_envs, None
        self.ids = np.arange(num_envs, dtype=np.int32)
        self.negative_steps = np.zeros(num_envs, np.int64)
        self.pipeline = None

    def reset(self, seed):
        """EnvPool seeds env i with seed + i when the pool is made and its reset takes no seed: so
        reset(seed=[s, s + 1, ...]) makes a new pool, whose envs then draw their tracks from those seeds."""
        assert list(seed) == list(range(seed[0], seed[0] + self.num_envs)), "EnvPool seeds its envs consecutively"
        self.close()
        kwargs = {"max_episode_steps": self.args.max_episode_steps} if self.args.max_episode_steps else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.pool = self.envpool.make(self.args.env_id, env_type="gymnasium", num_envs=self.num_envs, seed=int(seed[0]),
                                          num_threads=envpool_threads(self.num_envs), **kwargs)
        raw, info = self.pool.reset()
        self.pipeline = FramePipeline(self.args, self.num_envs, raw.shape[1:])
        self.pipeline.reset(info["env_id"], raw)
        self.negative_steps[:] = 0
        return self.pipeline.stack.copy(), {}

    def step(self, actions):
        N = self.num_envs
        reward, terminated, truncated = np.zeros(N), np.zeros(N, bool), np.zeros(N, bool)
        last = np.zeros((N, *self.pipeline.frame_shape), np.uint8)
        live = self.ids
        for _ in range(self.args.frame_skip):  # FrameSkip on the batch: an env that ends stops there
            raw, r, term, trunc, info = self.pool.step(actions[live], live)
            ids = info["env_id"]
            last[ids], terminated[ids], truncated[ids] = raw, term, trunc
            reward[ids] += r.astype(np.float64)
            live = np.sort(ids[~(term | trunc)]).astype(np.int32)
            if not len(live):
                break
        if self.args.max_negative_steps:
            self.negative_steps = np.where(reward < 0, self.negative_steps + 1, 0)
            truncated |= self.negative_steps >= self.args.max_negative_steps
        self.pipeline.push(self.ids, last)
        done = np.flatnonzero(terminated | truncated).astype(np.int32)
        info = {"final_obs": self.pipeline.stack.copy()} if len(done) else {}
        if len(done):
            raw, reset_info = self.pool.reset(done)
            self.pipeline.reset(reset_info["env_id"], raw)
            self.negative_steps[done] = 0
        return self.pipeline.stack.copy(), reward, terminated, truncated, info

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def make_vector_env(args):
    if args.env_backend == "envpool":
        return EnvPoolVectorEnv(args, args.num_envs)
    # SAME_STEP: the obs returned with a done already starts the next episode, the final obs is in
    # info["final_obs"]; gymnasium's default (NEXT_STEP) would add a reset step whose action is ignored.
    asynchronous = args.vector_mode == "async" or (args.vector_mode == "auto" and args.num_envs > 1)
    vector_env = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    return vector_env([make_env(args) for _ in range(args.num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def check_env(args):
    """Make one env to check its spaces before anything is written. Returns the preprocessed
    observation shape and the action space."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            env = gym.make(args.env_id)
        except Exception as e:  # unknown id (gym.error.Error), a missing dependency, a broken env
            raise UsageError(f"cannot make env {args.env_id!r}: {str(e).splitlines()[0]} (pass a registered gymnasium id such as --env-id CarRacing-v3)")
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(act_space, gym.spaces.Box):
        raise UsageError(f"{args.env_id} has a {type(act_space).__name__} action space; this script needs continuous (Box) "
                         "actions: use an env such as CarRacing-v3 (continuous by default)")
    if not (np.isfinite(act_space.low).all() and np.isfinite(act_space.high).all()):
        raise UsageError(f"{args.env_id} has unbounded actions (low {act_space.low}, high {act_space.high}); a Beta policy needs "
                         "finite bounds")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 3 or obs_space.shape[2] != 3 or obs_space.dtype != np.uint8:
        raise UsageError(f"{args.env_id} has observations of shape {getattr(obs_space, 'shape', obs_space)}; this CNN script "
                         "needs RGB images (height, width, 3) of uint8: for flat vectors use ppo_beta_continuous.py")
    if args.env_backend == "envpool":
        check_envpool_env(args, obs_space, act_space)
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
    if not args.exp_name or "/" in args.exp_name or os.sep in args.exp_name:
        raise UsageError(f"--exp-name must be a non-empty name without path separators, got {args.exp_name!r}")
    for name in ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "eval_episodes", "frame_skip",
                 "frame_stack", "cnn_feature_size"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("eval_every", "checkpoint_every", "torch_threads", "update_threads"):
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
    if not (0 < args.gamma <= 1 and 0 <= args.gae_lambda <= 1):
        raise UsageError("--gamma must be in (0, 1] and --gae-lambda in [0, 1]")
    for name in ("learning_rate", "clip_coef", "max_grad_norm", "clip_reward"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.target_kl is not None and not args.target_kl > 0:
        raise UsageError(f"--target-kl must be positive (or None), got {args.target_kl}")
    if not args.hidden_sizes or min(args.hidden_sizes) <= 0:
        raise UsageError(f"every --hidden-sizes entry must be positive, got {args.hidden_sizes}")
    args.batch_size = args.num_envs * args.num_steps
    if args.batch_size % args.num_minibatches:
        raise UsageError(f"--num-minibatches {args.num_minibatches} does not divide the batch of --num-envs x --num-steps = "
                         f"{args.batch_size}; pick a divisor")
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = args.total_timesteps // args.batch_size
    if args.num_iterations == 0:
        raise UsageError(f"--total-timesteps {args.total_timesteps} is less than one batch ({args.batch_size} = --num-envs x "
                         "--num-steps); raise it or shrink the batch")
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
        # np.add.reduce rather than x.mean()/x.var(): this runs twice per env step
        batch_count = x.shape[0]
        batch_mean = np.add.reduce(x, axis=0) / batch_count
        batch_var = np.add.reduce((x - batch_mean) ** 2, axis=0) / batch_count
        delta, total = batch_mean - self.mean, self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var, self.count = m2 / total, total

    def state_dict(self):
        return {"mean": torch.as_tensor(self.mean), "var": torch.as_tensor(self.var), "count": self.count}

    def load_state_dict(self, state):
        self.mean, self.var, self.count = state["mean"].numpy().copy(), state["var"].numpy().copy(), float(state["count"])


class RewardScaler:
    """CleanRL's reward normalization: divide by the running std of the discounted return."""

    def __init__(self, num_envs, gamma, clip, enabled=True):
        self.rms, self.returns = RunningMeanStd(), np.zeros(num_envs)
        self.gamma, self.clip, self.enabled = gamma, clip, enabled

    def __call__(self, rewards, dones):
        if not self.enabled:
            return rewards.astype(np.float32)
        self.returns = self.returns * self.gamma + rewards
        self.rms.update(self.returns)
        self.returns[dones] = 0.0
        return np.clip(rewards / np.sqrt(self.rms.var + 1e-8), -self.clip, self.clip).astype(np.float32)


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
    def __init__(self, obs_shape, act_dim, args):
        super().__init__()
        cnn = (obs_shape, args.cnn_channels, args.cnn_kernel_sizes, args.cnn_strides, args.cnn_feature_size)
        self.actor_trunk = CNNFeatureExtractor(*cnn)
        self.critic_trunk = None if args.shared_trunk else CNNFeatureExtractor(*cnn)
        self.critic = mlp(args.cnn_feature_size, args.hidden_sizes, 1, out_std=1.0)
        self.actor_params = mlp(args.cnn_feature_size, args.hidden_sizes, 2 * act_dim, out_std=0.01)

    def features(self, obs):
        """(actor features, critic features); the trunk runs once when it is shared."""
        actor_features = self.actor_trunk(obs)
        return actor_features, actor_features if self.critic_trunk is None else self.critic_trunk(obs)

    def get_value(self, obs):
        return self.critic(self.features(obs)[1])

    def get_actor_params(self, obs):
        return self.actor_params(self.actor_trunk(obs))

    def get_value_and_actor_params(self, obs):
        """(B, 1 + 2 * act_dim): the value, then the actor's outputs, from one pass of the trunk(s)."""
        actor_features, critic_features = self.features(obs)
        return torch.cat([self.critic(critic_features), self.actor_params(actor_features)], dim=1)


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


def compute_gae(rewards, values, last_value, terminations, truncations, final_values, gamma, gae_lambda):
    """GAE(lambda) over a (T, N) rollout with correct time limits.

    values[t] = V(obs_t). When step t ends an episode the env has already reset, so values[t+1]
    belongs to the next episode: the bootstrap is V(final obs) = final_values[t] after a
    truncation and 0 after a termination (truncation alone is not a death).
    """
    advantages = np.zeros_like(rewards)
    lastgaelam = np.zeros_like(last_value)
    dones = np.logical_or(terminations, truncations)
    for t in reversed(range(len(rewards))):
        next_values = last_value if t == len(rewards) - 1 else values[t + 1]
        next_values = np.where(dones[t], final_values[t], next_values) * (1.0 - terminations[t])
        delta = rewards[t] + gamma * next_values - values[t]
        lastgaelam = delta + gamma * gae_lambda * (1.0 - dones[t]) * lastgaelam
        advantages[t] = lastgaelam
    return advantages, advantages + values


def ppo_update(agent, optimizer, batch, args):
    """`update_epochs` passes of clipped-surrogate minibatch SGD over the batch (a dict of
    tensors: obs, actions, logprobs, advantages, returns, values). Returns the last minibatch's
    losses and the mean clip fraction, as tensors."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    clipfracs = []
    for epoch in range(args.update_epochs):
        perm = torch.randperm(args.batch_size, device=batch["obs"].device)
        obs, actions, old_logprobs, advantages, returns, old_values = (
            batch[k][perm] for k in ("obs", "actions", "logprobs", "advantages", "returns", "values"))
        for start in range(0, args.batch_size, args.minibatch_size):
            mb = slice(start, start + args.minibatch_size)
            actor_features, critic_features = agent.features(obs[mb])
            alpha, beta = beta_params(agent.actor_params(actor_features))
            newlogprob = beta_log_prob(actions[mb], alpha, beta)
            logratio = newlogprob - old_logprobs[mb]
            ratio = logratio.exp()
            mb_adv = advantages[mb]
            if args.norm_adv:
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
            pg_loss = torch.max(-mb_adv * ratio, -mb_adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)).mean()

            newvalue = agent.critic(critic_features).view(-1)
            if args.clip_vloss:
                v_clipped = old_values[mb] + torch.clamp(newvalue - old_values[mb], -args.clip_coef, args.clip_coef)
                v_loss = 0.5 * torch.max((newvalue - returns[mb]) ** 2, (v_clipped - returns[mb]) ** 2).mean()
            else:
                v_loss = 0.5 * ((newvalue - returns[mb]) ** 2).mean()
            entropy = beta_entropy(alpha, beta).mean()
            loss = pg_loss - args.ent_coef * entropy + v_loss * args.vf_coef

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
    return {"losses/value_loss": v_loss.detach(), "losses/policy_loss": pg_loss.detach(), "losses/entropy": entropy.detach(),
            "losses/old_approx_kl": old_approx_kl, "losses/approx_kl": approx_kl, "losses/clipfrac": torch.stack(clipfracs).mean()}


class Rollout:
    """The (T, N) rollout buffer, plus what carries over between rollouts (running episodes)."""

    def __init__(self, T, N, obs_shape, act_dim):
        self.obs = np.zeros((T, N, *obs_shape), np.uint8)  # frames as bytes: float32 would take 4x the memory
        self.actions = np.zeros((T, N, act_dim), np.float32)  # Beta samples x in (0, 1), not env actions
        self.rewards = np.zeros((T, N), np.float32)  # scaled
        self.terminations = np.zeros((T, N), np.float32)
        self.truncations = np.zeros((T, N), np.float32)
        self.final_obs_at, self.final_obs = [], []  # (t, env) and final obs of each ended episode
        self.episode_return, self.episode_length = np.zeros(N), np.zeros(N, dtype=np.int64)


def collect_rollout(envs, next_obs, agent, actor, rng, reward_scaler, rollout, low, high, global_step, on_episode):
    """Fill `rollout` with T steps of every env. The vector env autoresets in SAME_STEP mode: when
    step t ends an episode, the returned observation already starts the next one, and the real
    final observation (needed to bootstrap a truncation) is in info["final_obs"]."""
    T, N = rollout.rewards.shape
    rollout.final_obs_at, rollout.final_obs = [], []
    env_step_s = forward_s = 0.0
    for step in range(T):
        t0 = time.perf_counter()
        obs = next_obs
        action = actor.sample(obs, rng)
        t1 = time.perf_counter()
        env_action = to_env_action(action, low, high)
        assert np.all((env_action >= low) & (env_action <= high)), "a Beta policy never needs clipping"
        next_obs, reward, terminated, truncated, info = envs.step(env_action)
        t2 = time.perf_counter()
        env_step_s, forward_s = env_step_s + t2 - t1, forward_s + t1 - t0
        done = terminated | truncated
        rollout.obs[step], rollout.actions[step] = obs, action
        rollout.rewards[step] = reward_scaler(reward, done)
        rollout.terminations[step], rollout.truncations[step] = terminated, truncated
        rollout.episode_return += reward
        rollout.episode_length += 1
        if done.any():
            for i in np.flatnonzero(done):
                rollout.final_obs_at.append((step, i))
                rollout.final_obs.append(info["final_obs"][i])
                on_episode(global_step + (step + 1) * N, rollout.episode_return[i], rollout.episode_length[i])
            rollout.episode_return[done], rollout.episode_length[done] = 0.0, 0
    return next_obs, env_step_s, forward_s


def make_batch(agent, rollout, next_obs, args, device):
    """Values and log-probs of the whole rollout in one batched torch call each (the policy did
    not change during the rollout), then GAE. Returns the flat training batch."""
    T, N = rollout.rewards.shape
    obs_shape, act_dim = rollout.obs.shape[2:], rollout.actions.shape[-1]
    final_obs = np.stack(rollout.final_obs) if rollout.final_obs else np.zeros((0, *obs_shape), np.uint8)
    with torch.no_grad():
        all_obs = torch.from_numpy(np.concatenate([rollout.obs.reshape(-1, *obs_shape), next_obs, final_obs])).to(device)
        outputs = in_chunks(agent.get_value_and_actor_params, all_obs)  # the trunk once, not once for values and once for log-probs
        all_values = outputs[:, 0].cpu().numpy()
        b_obs, b_actions = all_obs[: T * N], torch.from_numpy(rollout.actions.reshape(-1, act_dim)).to(device)
        b_logprobs = beta_log_prob(b_actions, *beta_params(outputs[: T * N, 1:]))
    values, last_value = all_values[: T * N].reshape(T, N), all_values[T * N : T * N + N]
    final_values = np.zeros((T, N), np.float32)
    for (t, i), v in zip(rollout.final_obs_at, all_values[T * N + N :]):
        final_values[t, i] = v
    advantages, returns = compute_gae(rollout.rewards, values, last_value, rollout.terminations, rollout.truncations,
                                      final_values, args.gamma, args.gae_lambda)
    return {"obs": b_obs, "actions": b_actions, "logprobs": b_logprobs, "values": torch.from_numpy(values.reshape(-1)).to(device),
            "advantages": torch.from_numpy(advantages.reshape(-1)).to(device), "returns": torch.from_numpy(returns.reshape(-1)).to(device)}


def env_rate(args, num_steps):
    """The raw rate of the training envs `main` builds for `args` (backend, --num-envs, preprocessing),
    stepped with uniform random actions for `num_steps` agent steps of all envs together, in the unit
    of the run's SPS: agent steps per second. The yardstick of the training speed."""
    check_args(args)
    _, act_space = check_env(args)
    steps = max(1, math.ceil(num_steps / args.num_envs))
    actions = np.random.default_rng(args.seed).uniform(act_space.low, act_space.high, (steps, args.num_envs, act_space.shape[0]))
    envs = make_vector_env(args)
    try:
        envs.reset(seed=[args.seed + i for i in range(args.num_envs)])
        t0 = time.perf_counter()
        for action in actions.astype(np.float32):
            envs.step(action)
        return steps * args.num_envs / (time.perf_counter() - t0)
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

    metrics = ckpt["metrics"] if ckpt else new_metrics(args)
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
    # fused Adam: one kernel for all parameters, ~20% off each minibatch step of these small nets
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    reward_scaler = RewardScaler(args.num_envs, args.gamma, args.clip_reward, args.norm_reward)
    if ckpt:
        agent.load_state_dict(ckpt["agent"])
        optimizer.load_state_dict(ckpt["optimizer"])
        reward_scaler.rms.load_state_dict(ckpt["reward_rms"])
        restore_rng_states(ckpt["rng"], np_rng)
        rec.log.info(f"resuming {run_dir} from step {metrics['global_step']:,} (iteration {start_iteration})")
    else:
        rec.log.info(f"run directory {run_dir}; {args.num_iterations} iterations of {args.batch_size} steps on {device}")

    envs = make_vector_env(args)
    # A resumed run cannot restore the envs' internal state: start new episodes from new seeds.
    next_obs, _ = envs.reset(seed=[args.seed + args.num_envs * start_iteration + i for i in range(args.num_envs)])
    eval_seeds = [1_000_000 * (1 + args.seed) + k for k in range(args.eval_episodes)]

    def make_eval_env(render_mode):
        return make_env(args, render_mode)()

    def act_deterministic(obs):
        return to_env_action(actor.mean(obs), low, high)

    def save(name):
        atomic_torch_save(run_dir / "checkpoints" / name, {
            "agent": agent.state_dict(), "optimizer": optimizer.state_dict(), "reward_rms": reward_scaler.rms.state_dict(),
            "rng": rng_states(np_rng), "iteration": iteration, "global_step": global_step, "metrics": metrics, "args": asdict(args)})

    rollout = Rollout(args.num_steps, args.num_envs, obs_shape, act_dim)
    global_step, iteration = metrics["global_step"], start_iteration
    wall_time_before, t_start, steps_at_start = metrics["wall_time_s"], time.perf_counter(), global_step
    last_ckpt_step, last_eval_step = global_step, (metrics["eval"]["global_step"] or [0])[-1]
    for iteration in range(start_iteration + 1, args.num_iterations + 1):
        t_iter = time.perf_counter()
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

        actor = RolloutActor(agent, device)
        next_obs, env_step_s, forward_s = collect_rollout(
            envs, next_obs, agent, actor, np_rng, reward_scaler, rollout, low, high, global_step, rec.episode)
        global_step += args.batch_size
        t_rollout = time.perf_counter()
        torch.set_num_threads(update_threads)
        batch = make_batch(agent, rollout, next_obs, args, device)

        # ---- update ----
        stats = ppo_update(agent, optimizer, batch, args)
        stats = {k: float(v) for k, v in stats.items()}
        if not all(math.isfinite(v) for v in stats.values()) or not all(torch.isfinite(p).all() for p in agent.parameters()):
            metrics["status"] = "diverged"
            rec.log.error(f"NaN/inf in the losses or parameters at iteration {iteration}; stopped, keeping the checkpoint of step {last_ckpt_step:,}")
            rec.close()
            envs.close()
            raise Diverged(f"training diverged (NaN/inf) at step {global_step:,}; {run_dir / 'checkpoints' / 'latest.pt'} holds "
                           f"step {last_ckpt_step:,}: lower --learning-rate or --max-grad-norm")
        y_true, y_pred = batch["returns"].cpu().numpy(), batch["values"].cpu().numpy()
        var_y = np.var(y_true)
        stats["losses/explained_variance"] = float("nan") if var_y == 0 else float(1 - np.var(y_true - y_pred) / var_y)
        torch.set_num_threads(act_threads)
        t_update = time.perf_counter()

        # ---- evaluation, logging, checkpoints ----
        eval_return = None
        final = iteration == args.num_iterations
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
        rec.progress(global_step, args.num_iterations * args.batch_size, sps, eval_return)
        t_end = time.perf_counter()
        rec.timing({"iteration": iteration, "global_step": global_step, "time_s": t_end - t_iter, "rollout_s": t_rollout - t_iter,
                    "env_step_s": env_step_s, "policy_forward_s": forward_s, "update_s": t_update - t_rollout,
                    "eval_s": t_eval - t_update, "io_s": t_end - t_eval, "sps": args.batch_size / (t_end - t_iter)})

    envs.close()
    rec.log.info(f"done: {global_step:,} steps in {metrics['wall_time_s']:,.0f}s ({metrics['sps']:,.0f} SPS); "
                 f"best eval return {metrics['best_eval_return']}")
    rec.close()


if __name__ == "__main__":
    cli(main, Args)
