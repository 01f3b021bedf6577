"""PPO with a diagonal Gaussian policy for continuous control, in one file.

Proximal Policy Optimization (Schulman et al., 2017, arXiv 1707.06347) with the implementation
details of CleanRL's `ppo_continuous_action.py` ("The 37 Implementation Details of PPO", Huang et
al., ICLR blog track 2022), and three corrections:
- time limits are not deaths: a truncated episode is bootstrapped with the value of its final
  observation (Pardo et al., "Time Limits in Reinforcement Learning", ICML 2018);
- the running observation statistics live in the agent, so they are checkpointed, resumed and
  frozen for evaluation, instead of hiding in an env wrapper;
- gymnasium's autoreset is explicit (SAME_STEP): no transition across an episode boundary.

Run:  python ppo_continuous.py --env-id Hopper-v4
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
    """torch CPU threads (1 is fastest for small MLPs; 0 keeps torch's default)"""
    update_impl: Literal["numpy", "torch"] = "numpy"
    """the update on CPU: `numpy` (hand-written backprop, ~5x faster a minibatch for these small MLPs) or `torch` (autograd: the reference, always used on CUDA)"""
    runs_dir: str = "runs"
    """where run directories are created: {runs_dir}/{env_id}__{exp_name}__seed{seed}"""
    resume: bool = False
    """continue the run in the run directory from checkpoints/latest.pt (starts fresh if there is none)"""

    # Environment
    env_id: str = "Hopper-v4"
    """the id of the gymnasium environment (continuous actions, flat observations)"""
    total_timesteps: int = 1_000_000
    """total environment steps of the experiment"""
    num_envs: int = 1
    """the number of parallel environments"""
    env_backend: Literal["gymnasium", "envpool"] = "gymnasium"
    """the training envs' implementation: `gymnasium`, or `envpool` (C++, batched; Linux: pip install envpool); evaluation and videos always run gymnasium's env of the same id"""
    vector_mode: Literal["sync", "async"] = "sync"
    """gymnasium vector env: `sync` steps envs in this process, `async` in one subprocess each (not used by envpool)"""
    max_episode_steps: Optional[int] = None
    """override the env's time limit (episode length) for training and evaluation"""

    # Algorithm
    num_steps: int = 2048
    """the number of steps to run in each environment per policy rollout"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    anneal_lr: bool = True
    """toggle linear annealing of the learning rate to zero"""
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
    """toggle running observation normalization (statistics held by the agent)"""
    norm_reward: bool = True
    """toggle reward scaling by the running std of the discounted return"""
    clip_obs: float = 10.0
    """normalized observations are clipped to [-clip_obs, clip_obs]"""
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


def make_env(env_id, max_episode_steps=None, render_mode=None):
    def thunk():
        env = gym.make(env_id, max_episode_steps=max_episode_steps, **({"render_mode": render_mode} if render_mode else {}))
        vis = getattr(getattr(env.unwrapped, "model", None), "vis", None)
        if render_mode and vis is not None:
            # MuJoCo on a software GL (headless CPU) spends ~85% of a frame on the shadow map
            vis.quality.shadowsize, vis.quality.offsamples = 0, 0
        return env

    return thunk


class SerialVectorEnv:
    """gymnasium's SyncVectorEnv in SAME_STEP autoreset mode without its per-step bookkeeping,
    which costs ~25 us a step, a quarter of a Hopper-v4 step: the envs stepped in a plain loop."""

    def __init__(self, env_fns):
        self.envs = [fn() for fn in env_fns]

    def reset(self, seed=None):  # as gymnasium: an int seeds env i with seed + i
        seeds = [seed + i for i in range(len(self.envs))] if isinstance(seed, int) else seed or [None] * len(self.envs)
        return np.array([env.reset(seed=s)[0] for env, s in zip(self.envs, seeds)]), {}

    def step(self, actions):
        n = len(self.envs)
        obs, final_obs = [None] * n, {}
        rewards, terminated, truncated = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        for i, env in enumerate(self.envs):
            obs[i], rewards[i], terminated[i], truncated[i], _ = env.step(actions[i])
            if terminated[i] or truncated[i]:
                final_obs[i] = obs[i]
                obs[i], _ = env.reset()
        return np.array(obs), rewards, terminated, truncated, {"final_obs": final_obs}

    def close(self):
        for env in self.envs:
            env.close()


def available_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def envpool_threads(num_envs):
    return max(1, min(num_envs, available_cores()))


class EnvPoolVectorEnv:
    """The `--env-backend envpool` training envs: EnvPool's batched C++ envs behind SerialVectorEnv's
    interface, with gymnasium's SAME_STEP autoreset. EnvPool's own autoreset is NEXT_STEP-like (the
    step after a done returns the reset observation with reward 0, its action ignored), so an env
    that ends is reset at once (`reset(env_ids)` resets just those; their next step is a real one)
    and its final observation goes to info["final_obs"]. EnvPool reports time limits as truncations."""

    def __init__(self, args):
        import envpool

        self.envpool, self.args, self.pool = envpool, args, None

    def reset(self, seed):
        """EnvPool seeds env i with seed + i when the pool is made, and its reset takes no seed: so a
        reset with seeds [s, s + 1, ...] (or s) makes a new pool."""
        first = seed if isinstance(seed, int) else int(seed[0])
        assert isinstance(seed, int) or list(seed) == list(range(first, first + self.args.num_envs)), "EnvPool seeds envs consecutively"
        self.close()
        kwargs = {"max_episode_steps": self.args.max_episode_steps} if self.args.max_episode_steps else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.pool = self.envpool.make(self.args.env_id, env_type="gymnasium", num_envs=self.args.num_envs, seed=first,
                                          num_threads=envpool_threads(self.args.num_envs), **kwargs)
        return self.pool.reset()[0].copy(), {}

    def step(self, actions):
        obs, reward, terminated, truncated, _ = self.pool.step(actions)
        obs, done, final_obs = obs.copy(), np.flatnonzero(terminated | truncated), {}
        if len(done):
            final_obs = {i: obs[i].copy() for i in done}
            reset_obs, info = self.pool.reset(done.astype(np.int32))
            obs[info["env_id"]] = reset_obs
        return obs, reward, terminated, truncated, {"final_obs": final_obs}

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def make_vector_env(args):
    if args.env_backend == "envpool":
        return EnvPoolVectorEnv(args)
    # SAME_STEP: the obs returned with a done already starts the next episode, the final obs is in
    # info["final_obs"]; gymnasium's default (NEXT_STEP) would add a reset step whose action is ignored.
    env_fns = [make_env(args.env_id, args.max_episode_steps) for _ in range(args.num_envs)]
    if args.vector_mode == "sync":
        return SerialVectorEnv(env_fns)
    return gym.vector.AsyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def env_rate(args, num_steps):
    """Env steps per second of the training envs, built as main builds them, under uniform random
    actions: the environment-bound limit of the train SPS (speed.py divides by it)."""
    _, act_space = check_env(args)
    act_space.seed(args.seed)
    actions = np.stack([np.stack([act_space.sample() for _ in range(args.num_envs)]) for _ in range(num_steps)])
    envs = make_vector_env(args)
    envs.reset(seed=args.seed)
    start = time.perf_counter()
    for action in actions:
        envs.step(action)
    elapsed = time.perf_counter() - start
    envs.close()
    return num_steps * args.num_envs / elapsed


def check_env(args):
    """Make one env to check its spaces before anything is written."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            env = gym.make(args.env_id)
        except Exception as e:  # unknown id (gym.error.Error), a missing dependency, a broken env
            raise UsageError(f"cannot make env {args.env_id!r}: {str(e).splitlines()[0]} (pass a registered gymnasium id such as --env-id Hopper-v4)")
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(act_space, gym.spaces.Box):
        raise UsageError(f"{args.env_id} has a {type(act_space).__name__} action space; this script needs continuous (Box) "
                         "actions: use an env such as Hopper-v4")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise UsageError(f"{args.env_id} has observations of shape {getattr(obs_space, 'shape', obs_space)}; this MLP script "
                         "needs flat vectors: for images use ppo_cnn_carracing.py")
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
    if not args.exp_name or "/" in args.exp_name or os.sep in args.exp_name:
        raise UsageError(f"--exp-name must be a non-empty name without path separators, got {args.exp_name!r}")
    for name in ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "eval_episodes"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("eval_every", "checkpoint_every", "torch_threads"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.max_episode_steps is not None and args.max_episode_steps <= 0:
        raise UsageError(f"--max-episode-steps must be positive, got {args.max_episode_steps}")
    if not (0 < args.gamma <= 1 and 0 <= args.gae_lambda <= 1):
        raise UsageError("--gamma must be in (0, 1] and --gae-lambda in [0, 1]")
    for name in ("learning_rate", "clip_coef", "max_grad_norm", "clip_obs", "clip_reward"):
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
        # np.minimum/np.maximum: np.clip's argument handling costs more than the clipping
        return np.minimum(np.maximum((obs - self.mean) / np.sqrt(self.var + 1e-8), -self.clip), self.clip).astype(np.float32)


class RewardScaler:
    """CleanRL's reward normalization: divide each reward by the running std of the discounted
    return, the statistics updated with every step's returns before that step's reward is scaled.
    The policy never sees scaled rewards, so a whole (T, N) rollout is scaled at once: the
    running variance after each step is computed in closed form from cumulative sums (the same
    numbers as T sequential updates, up to float64 rounding)."""

    def __init__(self, num_envs, gamma, clip, enabled=True):
        self.rms, self.returns = RunningMeanStd(), np.zeros(num_envs)
        self.gamma, self.clip, self.enabled = gamma, clip, enabled

    def scale(self, rewards, dones):
        if not self.enabled:
            return rewards.astype(np.float32)
        T, N = rewards.shape
        returns = np.empty((T, N))
        for i in range(N):  # the discounted return, restarted after each done: python floats beat numpy on a row
            running, column = float(self.returns[i]), []
            for reward, done in zip(rewards[:, i].tolist(), dones[:, i].tolist()):
                running = running * self.gamma + reward
                column.append(running)
                running = 0.0 if done else running
            returns[:, i], self.returns[i] = column, running
        rms, count = self.rms, self.rms.count + N * np.arange(1, T + 1)
        shifted = returns - rms.mean  # sums around the old mean: no cancellation of large squares
        mean_shift = np.cumsum(shifted.sum(1)) / count
        var = (rms.var * rms.count + np.cumsum((shifted**2).sum(1))) / count - mean_shift**2
        rms.mean, rms.var, rms.count = rms.mean + mean_shift[-1], var[-1], float(count[-1])
        return np.clip(rewards / np.sqrt(var + 1e-8)[:, None], -self.clip, self.clip).astype(np.float32)


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
    def __init__(self, obs_dim, act_dim, hidden_sizes, clip_obs=10.0, norm_obs=True):
        super().__init__()
        self.critic = mlp(obs_dim, hidden_sizes, 1, out_std=1.0)
        self.actor_mean = mlp(obs_dim, hidden_sizes, act_dim, out_std=0.01)
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))
        self.obs_rms = ObsNormalizer((obs_dim,), clip_obs, norm_obs)

    def get_extra_state(self):  # the observation statistics travel with the weights
        return self.obs_rms.state_dict()

    def set_extra_state(self, state):
        self.obs_rms.load_state_dict(state)

    def get_value(self, x):
        return self.critic(x)


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


def compute_gae(rewards, values, last_value, terminations, truncations, final_values, gamma, gae_lambda):
    """GAE(lambda) over a (T, N) rollout with correct time limits.

    values[t] = V(obs_t). When step t ends an episode the env has already reset, so values[t+1]
    belongs to the next episode: the bootstrap is V(final obs) = final_values[t] after a
    truncation and 0 after a termination (truncation alone is not a death).
    """
    dones = np.logical_or(terminations, truncations)
    next_values = np.where(dones, final_values, np.concatenate([values[1:], last_value[None]])) * (1.0 - terminations)
    deltas = rewards + gamma * next_values - values  # all TD errors at once; only the sum below is sequential
    carry = gamma * gae_lambda * (1.0 - dones)
    advantages = np.zeros_like(deltas)
    for i in range(deltas.shape[1]):  # backwards in time, env by env: python floats beat numpy on a row
        lastgaelam, column = 0.0, []
        for delta, c in zip(deltas[::-1, i].tolist(), carry[::-1, i].tolist()):
            lastgaelam = delta + c * lastgaelam
            column.append(lastgaelam)
        advantages[::-1, i] = column
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
            mean, logstd = agent.actor_mean(obs[mb]), agent.actor_logstd
            newlogprob = gaussian_log_prob(actions[mb], mean, logstd)
            logratio = newlogprob - old_logprobs[mb]
            ratio = logratio.exp()
            mb_adv = advantages[mb]
            if args.norm_adv:
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
            pg_loss = torch.max(-mb_adv * ratio, -mb_adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)).mean()

            newvalue = agent.critic(obs[mb]).view(-1)
            if args.clip_vloss:
                v_clipped = old_values[mb] + torch.clamp(newvalue - old_values[mb], -args.clip_coef, args.clip_coef)
                v_loss = 0.5 * torch.max((newvalue - returns[mb]) ** 2, (v_clipped - returns[mb]) ** 2).mean()
            else:
                v_loss = 0.5 * ((newvalue - returns[mb]) ** 2).mean()
            entropy = gaussian_entropy(logstd).mean()
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


class NumpyLearner:
    """The CPU fast path of the update. The agent's parameters, their gradients and Adam's moments
    are views of flat float32 arrays, and backprop is written out by hand: a 64-sample minibatch
    step of these small MLPs costs ~1 ms in torch (op dispatch, autograd, optimizer bookkeeping)
    and a fraction of that in numpy. It computes the same update as ppo_update up to float
    rounding (tests/test_ppo_math.py); torch stays the owner of the weights and optimizer state,
    which pull() and push() copy in and out once per iteration."""

    def __init__(self, agent, optimizer):
        self.agent, self.optimizer = agent, optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.bounds = list(itertools.pairwise(np.cumsum([0] + [p.numel() for p in self.params])))
        self.theta, self.grad, self.exp_avg, self.exp_avg_sq = (np.zeros(self.bounds[-1][1], np.float32) for _ in range(4))
        self.p, self.g = ([flat[a:b].reshape(p.shape) for (a, b), p in zip(self.bounds, self.params)] for flat in (self.theta, self.grad))
        index = {id(p): i for i, p in enumerate(self.params)}
        self.critic, self.actor = ([(index[id(m.weight)], index[id(m.bias)]) for m in net if isinstance(m, nn.Linear)]
                                   for net in (agent.critic, agent.actor_mean))
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


def ppo_update_numpy(learner, batch, args):
    """ppo_update on the NumpyLearner: the same minibatches (torch.randperm), losses and
    statistics; the gradients are written out instead of taken by autograd. Where torch.max
    would split a tie between the clipped and unclipped losses, the gradient goes to one side:
    the two differ by rounding there."""
    learner.pull()
    batch = {k: v.numpy() for k, v in batch.items()}
    batch["actions"] = learner.action_features(batch["actions"])
    B, lo, hi, clipped_count = args.minibatch_size, 1 - args.clip_coef, 1 + args.clip_coef, 0
    for epoch in range(args.update_epochs):
        perm = torch.randperm(args.batch_size).numpy()
        obs, actions, old_logprobs, advantages, returns, old_values = (
            batch[k][perm] for k in ("obs", "actions", "logprobs", "advantages", "returns", "values"))
        for start in range(0, args.batch_size, B):
            mb = slice(start, start + B)
            newlogprob, cache = learner.log_prob(obs[mb], actions[mb])
            logratio = newlogprob - old_logprobs[mb]
            ratio = np.exp(logratio)
            mb_adv = advantages[mb]
            if args.norm_adv:  # (x - mean) / (unbiased std), as torch.std
                centered = mb_adv - np.add.reduce(mb_adv) / B
                mb_adv = centered / (math.sqrt(float(centered @ centered) / (B - 1)) + 1e-8)
            pg_losses, pg_losses_clipped = -mb_adv * ratio, -mb_adv * np.minimum(np.maximum(ratio, lo), hi)
            unclipped = pg_losses >= pg_losses_clipped  # where the max is the unclipped term, which has a gradient
            pg_loss = float(np.add.reduce(np.where(unclipped, pg_losses, pg_losses_clipped))) / B
            d_ratio = np.where(unclipped, mb_adv, 0.0) * (-1.0 / B)

            newvalue, critic_inputs = learner.mlp_forward(learner.critic, obs[mb])
            newvalue, v_error = newvalue[:, 0], newvalue[:, 0] - returns[mb]
            if args.clip_vloss:
                v_change = newvalue - old_values[mb]
                v_step = np.minimum(np.maximum(v_change, -args.clip_coef), args.clip_coef)
                v_clipped_error = old_values[mb] + v_step - returns[mb]
                v_losses, v_losses_clipped = v_error * v_error, v_clipped_error * v_clipped_error
                larger = v_losses >= v_losses_clipped
                v_loss = 0.5 * float(np.add.reduce(np.where(larger, v_losses, v_losses_clipped))) / B
                d_value = np.where(larger, v_error, v_clipped_error * (v_step == v_change)) / B
            else:
                v_loss, d_value = 0.5 * float(v_error @ v_error) / B, v_error / B

            # loss = pg_loss - ent_coef * entropy + vf_coef * v_loss
            learner.log_prob_backward(cache, d_ratio * ratio, -args.ent_coef)
            learner.mlp_backward(learner.critic, critic_inputs, args.vf_coef * d_value[:, None])
            learner.step(args.max_grad_norm)
            clipped_count += np.count_nonzero(np.abs(ratio - 1.0) > args.clip_coef)

        old_approx_kl, approx_kl = float((-logratio).mean()), float(((ratio - 1) - logratio).mean())
        if args.target_kl is not None and approx_kl > args.target_kl:
            break
    learner.push()
    entropy = learner.entropy(cache)  # of the last minibatch, as ppo_update reports it
    num_minibatches = (epoch + 1) * (args.batch_size // B)
    return {"losses/value_loss": float(v_loss), "losses/policy_loss": float(pg_loss), "losses/entropy": entropy,
            "losses/old_approx_kl": old_approx_kl, "losses/approx_kl": approx_kl, "losses/clipfrac": clipped_count / (num_minibatches * B)}


class Rollout:
    """The (T, N) rollout buffer, plus what carries over between rollouts (running episodes)."""

    def __init__(self, T, N, obs_dim, act_dim):
        self.obs = np.zeros((T, N, obs_dim), np.float32)  # normalized, as the policy saw them
        self.actions = np.zeros((T, N, act_dim), np.float32)  # unclipped samples
        self.raw_rewards = np.zeros((T, N))  # as the env gave them
        self.rewards = np.zeros((T, N), np.float32)  # scaled
        self.terminations = np.zeros((T, N), np.float32)
        self.truncations = np.zeros((T, N), np.float32)
        self.final_obs_at, self.final_obs = [], []  # (t, env) and normalized final obs of each ended episode
        self.episode_return, self.episode_length = np.zeros(N), np.zeros(N, dtype=np.int64)


def collect_rollout(envs, next_obs, agent, actor, rng, reward_scaler, rollout, low, high, global_step, on_episode):
    """Fill `rollout` with T steps of every env. The vector env autoresets in SAME_STEP mode: when
    step t ends an episode, the returned observation already starts the next one, and the real
    final observation (needed to bootstrap a truncation) is in info["final_obs"]."""
    T, N = rollout.rewards.shape
    rollout.final_obs_at, rollout.final_obs = [], []
    env_step_s = forward_s = 0.0
    noise = rng.standard_normal((T, N, len(actor.std)), dtype=np.float32)  # the same numbers as one draw per step
    for step in range(T):
        t0 = time.perf_counter()
        obs_norm = agent.obs_rms(next_obs, update=True)
        action = actor.mean(obs_norm) + actor.std * noise[step]
        t1 = time.perf_counter()
        # the log-prob is of the unclipped sample; only the env sees the clipped action
        next_obs, reward, terminated, truncated, info = envs.step(np.minimum(np.maximum(action, low), high))
        t2 = time.perf_counter()
        env_step_s, forward_s = env_step_s + t2 - t1, forward_s + t1 - t0
        done = terminated | truncated
        rollout.obs[step], rollout.actions[step] = obs_norm, action
        rollout.raw_rewards[step] = reward
        rollout.terminations[step], rollout.truncations[step] = terminated, truncated
        rollout.episode_return += reward
        rollout.episode_length += 1
        if done.any():
            for i in np.flatnonzero(done):
                rollout.final_obs_at.append((step, i))
                rollout.final_obs.append(agent.obs_rms(info["final_obs"][i][None])[0])
                on_episode(global_step + (step + 1) * N, rollout.episode_return[i], rollout.episode_length[i])
            rollout.episode_return[done], rollout.episode_length[done] = 0.0, 0
    rollout.rewards[:] = reward_scaler.scale(rollout.raw_rewards, np.logical_or(rollout.terminations, rollout.truncations))
    return next_obs, env_step_s, forward_s


def make_batch(agent, rollout, next_obs, args, device):
    """Values and log-probs of the whole rollout in one batched torch call each (the policy did
    not change during the rollout), then GAE. Returns the flat training batch."""
    T, N = rollout.rewards.shape
    obs_dim, act_dim = rollout.obs.shape[-1], rollout.actions.shape[-1]
    final_obs = np.stack(rollout.final_obs) if rollout.final_obs else np.zeros((0, obs_dim), np.float32)
    with torch.no_grad():
        all_obs = torch.from_numpy(np.concatenate([rollout.obs.reshape(-1, obs_dim), agent.obs_rms(next_obs), final_obs])).to(device)
        all_values = agent.get_value(all_obs).view(-1).cpu().numpy()
        b_obs, b_actions = all_obs[: T * N], torch.from_numpy(rollout.actions.reshape(-1, act_dim)).to(device)
        b_logprobs = gaussian_log_prob(b_actions, agent.actor_mean(b_obs), agent.actor_logstd)
    values, last_value = all_values[: T * N].reshape(T, N), all_values[T * N : T * N + N]
    final_values = np.zeros((T, N), np.float32)
    for (t, i), v in zip(rollout.final_obs_at, all_values[T * N + N :]):
        final_values[t, i] = v
    advantages, returns = compute_gae(rollout.rewards, values, last_value, rollout.terminations, rollout.truncations,
                                      final_values, args.gamma, args.gae_lambda)
    return {"obs": b_obs, "actions": b_actions, "logprobs": b_logprobs, "values": torch.from_numpy(values.reshape(-1)).to(device),
            "advantages": torch.from_numpy(advantages.reshape(-1)).to(device), "returns": torch.from_numpy(returns.reshape(-1)).to(device)}


def main(args: Args):
    check_args(args)
    obs_space, act_space = check_env(args)
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
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    np_rng = np.random.default_rng(args.seed)

    obs_dim, act_dim = obs_space.shape[0], act_space.shape[0]
    low, high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)
    agent = Agent(obs_dim, act_dim, args.hidden_sizes, args.clip_obs, args.norm_obs).to(device)
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
    learner = NumpyLearner(agent, optimizer) if args.update_impl == "numpy" and device.type == "cpu" else None

    envs = make_vector_env(args)
    # A resumed run cannot restore the envs' internal state: start new episodes from new seeds.
    next_obs, _ = envs.reset(seed=[args.seed + args.num_envs * start_iteration + i for i in range(args.num_envs)])
    eval_seeds = [1_000_000 * (1 + args.seed) + k for k in range(args.eval_episodes)]

    def make_eval_env(render_mode):
        return make_env(args.env_id, args.max_episode_steps, render_mode)()

    def act_deterministic(obs):
        return np.clip(actor.mean(agent.obs_rms(obs)), low, high)

    def save(name):
        atomic_torch_save(run_dir / "checkpoints" / name, {
            "agent": agent.state_dict(), "optimizer": optimizer.state_dict(), "reward_rms": reward_scaler.rms.state_dict(),
            "rng": rng_states(np_rng), "iteration": iteration, "global_step": global_step, "metrics": metrics, "args": asdict(args)})

    rollout = Rollout(args.num_steps, args.num_envs, obs_dim, act_dim)
    global_step, iteration = metrics["global_step"], start_iteration
    wall_time_before, t_start, steps_at_start = metrics["wall_time_s"], time.perf_counter(), global_step
    last_ckpt_step, last_eval_step = global_step, (metrics["eval"]["global_step"] or [0])[-1]
    for iteration in range(start_iteration + 1, args.num_iterations + 1):
        t_iter = time.perf_counter()
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

        actor = NumpyActor(agent)
        next_obs, env_step_s, forward_s = collect_rollout(
            envs, next_obs, agent, actor, np_rng, reward_scaler, rollout, low, high, global_step, rec.episode)
        global_step += args.batch_size
        t_rollout = time.perf_counter()
        batch = make_batch(agent, rollout, next_obs, args, device)

        # ---- update ----
        stats = ppo_update_numpy(learner, batch, args) if learner else ppo_update(agent, optimizer, batch, args)
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
        t_update = time.perf_counter()

        # ---- evaluation, logging, checkpoints ----
        eval_return = None
        final = iteration == args.num_iterations
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
