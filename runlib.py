"""The run: everything a training script needs that is not its algorithm, written once.

A training script holds its algorithm (Args, make_env, the networks, the loss, the rollout, main's loop) and imports the
rest from here, as CleanRL's scripts import `cleanrl_utils`:
- the CLI and its one-line errors (`cli`), the argument and env checks that every script shares;
- the run directory, metrics.json, timings.jsonl, logs/train.log, TensorBoard and W&B, checkpoints, `--resume`,
  `--init-from`, evaluation and best-episode videos (`Run`), stopping on a signal (`safe_point`).
- the update's minibatch step and the rollout's policy call, compiled (and on CUDA, graphed) with --compile.
The deterministic policy that evaluation runs and `--export` writes is policylib.py's; the envs' plumbing (vector envs,
EnvPool, the observation and reward transforms) is envlib.py's; `--config` files are config.py's. To change the
algorithm, edit its script; to change what every run writes, edit this file.
"""

import contextlib
import copy
import ctypes
import io
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import Field, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, NoReturn, Protocol, TypeVar

import gymnasium as gym
import imageio
import numpy as np
import torch
import tyro
from torch.utils.tensorboard import SummaryWriter

from config import UsageError, atomic_write, config_flags, config_record, tyro_message
from envlib import Array, StateDict
from policylib import MeanPolicy, check_export, export_policy

# gymnasium warns at every gym.make of a v4 MuJoCo env, in colour codes; the run's log says it once (version_note)
warnings.filterwarnings("ignore", message=r".*The environment .* is out of date", category=DeprecationWarning)

CHECKPOINT_FORMAT = 2  # raised when what a checkpoint holds changes: an older file is refused, never misread
RESUME_MAY_DIFFER: tuple[str, ...] = ("resume", "runs_dir", "cuda", "compile", "torch_threads", "vector_mode", "capture_video")
RESUME_MAY_DIFFER += ("track", "config")  # how a run computes or was started, not what: a resume may change them
EVAL_OWN = ("eval_checkpoint", "video_path", "export", "eval_episodes", "env_backend")  # an evaluation's own (gymnasium's env)
# what the policy sees and is: --init-from needs a checkpoint with the same values (of those a script has)
INIT_SAME: tuple[str, ...] = ("norm_obs", "clip_obs", "frame_skip", "grayscale", "resize", "frame_stack")
INIT_SAME += ("hidden_sizes", "cnn_channels", "cnn_kernel_sizes", "cnn_strides", "cnn_feature_size", "shared_trunk")

# a run stopped by a signal exits with 75, sysexits.h's "temporary failure": its last whole iteration is saved and
# `--resume` continues it (benchmark.sh --slurm requeues such a task)
EXIT_INTERRUPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)  # preemption or a time limit, Ctrl-C, Slurm's --signal

Policy = Callable[[Array], Array]  # a batch of raw observations -> the env's actions
MakeEnv = Callable[[str | None], gym.Env[Any, Any]]  # render_mode -> an evaluation env


class RunArgs(Protocol):
    """The Args fields this module reads; every script's Args has them."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]
    seed: int
    torch_deterministic: bool
    cuda: bool
    compile: bool
    torch_threads: int
    runs_dir: str
    resume: bool
    init_from: str | None
    config: str | None
    reward_delay: int | Literal["episode"]
    env_id: str
    max_grad_norm: float
    env_backend: Literal["gymnasium", "envpool"]
    total_timesteps: int
    max_episode_steps: int | None
    eval_every: int
    eval_episodes: int
    capture_video: bool
    checkpoint_every: int
    eval_checkpoint: str | None
    video_path: str | None
    export: str | None
    track: bool
    wandb_project_name: str
    wandb_entity: str | None

    @property
    def exp_name(self) -> str | None: ...  # GRPO's default is filled in by its check_args


class Stateful(Protocol):
    def state_dict(self) -> StateDict: ...

    def load_state_dict(self, state: StateDict, /) -> object: ...


# ---- argument and env checks: before anything is written ----


def check_arg_ranges(
    args: RunArgs, positive: Sequence[str] = (), non_negative: Sequence[str] = (), positive_or_none: Sequence[str] = ()
) -> None:
    """The run's own arguments, and a script's `positive`, `non_negative` and `positive_or_none` ones."""
    if not args.exp_name or "/" in args.exp_name or os.sep in args.exp_name:
        raise UsageError(f"--exp-name must be a non-empty name without path separators, got {args.exp_name!r}")
    for name in (*positive, "total_timesteps", "eval_episodes"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in (*non_negative, "eval_every", "checkpoint_every", "torch_threads"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in (*positive_or_none, "max_episode_steps"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive (or None), got {getattr(args, name)}")
    if args.reward_delay != "episode" and args.reward_delay < 1:
        raise UsageError(f"--reward-delay must be a number of steps >= 1 (1: none) or `episode`, got {args.reward_delay}")
    for name in ("hidden_sizes", "cnn_channels", "cnn_kernel_sizes", "cnn_strides"):
        if hasattr(args, name) and (not getattr(args, name) or min(getattr(args, name)) <= 0):
            raise UsageError(f"every --{name.replace('_', '-')} entry must be positive, got {getattr(args, name)}")


def choose_gl_backend(args: RunArgs) -> None:
    """MuJoCo picks its OpenGL library when it is imported, and a missing one crashes the import. A run that films nothing
    needs none; one that films uses EGL (headless) if it loads, else says once what is missing and trains without video."""
    if not sys.platform.startswith("linux") or "MUJOCO_GL" in os.environ:
        return
    films = args.capture_video and (args.eval_every > 0 or args.eval_checkpoint is not None)
    error = "--no-capture-video"
    if films:
        try:
            ctypes.CDLL("libEGL.so.1")
            error = ""
        except OSError as e:
            error = str(e)
    os.environ["MUJOCO_GL"] = "disable" if error else "egl"
    if films and error:
        print(f"warning: no videos: libEGL cannot load ({error}); apt install libegl1, or --no-capture-video", file=sys.stderr)
        args.capture_video = False


def check_env(args: RunArgs, whole_episodes: bool = False) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """Make one env to check its spaces and its time limit before anything is written: (observation, action) spaces.
    Evaluation, and GRPO's rollouts (`whole_episodes`), run episodes to their end: they need a time limit."""
    choose_gl_backend(args)
    try:
        env = gym.make(args.env_id)
    except Exception as e:  # unknown id, a missing dependency, a broken env
        raise UsageError(f"cannot make env {args.env_id!r} ({str(e).splitlines()[0]}): pass a registered --env-id")
    obs_space, act_space, spec = env.observation_space, env.action_space, env.spec
    env.close()
    if not isinstance(act_space, gym.spaces.Box):
        raise UsageError(f"{args.env_id} has {type(act_space).__name__} actions; this script needs continuous (Box) ones")
    if not isinstance(obs_space, gym.spaces.Box):
        raise UsageError(f"{args.env_id} has {type(obs_space).__name__} observations; this script needs a Box of them")
    reasons = [  # why the episodes must end
        ("GRPO compares whole episodes", whole_episodes),
        ("--reward-delay episode pays at the end", args.reward_delay == "episode"),
        ("evaluation runs episodes to their end (--eval-every 0: none)", args.eval_every or args.eval_checkpoint),
    ]
    why = [text for text, applies in reasons if applies]
    if why and args.max_episode_steps is None and (spec is None or spec.max_episode_steps is None):
        raise UsageError(f"{args.env_id} has no time limit and {why[0]}: pass --max-episode-steps")
    if args.env_backend == "envpool":
        check_envpool_env(args.env_id, obs_space, act_space)
    return obs_space, act_space


def check_envpool_env(env_id: str, obs_space: gym.spaces.Box, act_space: gym.spaces.Box) -> None:
    """The EnvPool env must exist and look like gymnasium's (the evaluation env) to the policy."""
    try:
        import envpool
    except ImportError:
        raise UsageError("--env-backend envpool needs EnvPool, which is not installed: pip install envpool (Linux x86_64)")
    if env_id not in envpool.list_all_envs():
        raise UsageError(f"EnvPool has no env {env_id!r}: use --env-backend gymnasium")
    with warnings.catch_warnings(action="ignore"):
        spec = envpool.make_spec(env_id)
        ep_obs, ep_act = spec.observation_space, spec.action_space  # gymnasium warns of their dtypes here
    same = (ep_obs.shape, ep_obs.dtype, ep_act.shape) == (obs_space.shape, obs_space.dtype, act_space.shape)
    if not (same and np.allclose(ep_act.low, act_space.low) and np.allclose(ep_act.high, act_space.high)):
        raise UsageError(f"EnvPool's {env_id} differs from gymnasium's ({ep_obs}, {ep_act}): use --env-backend gymnasium")


def version_note(env_id: str) -> str | None:
    """gymnasium calls v4 MuJoCo envs out of date; say once, in plain words, why a run may still use one."""
    namespace, name, version = gym.envs.registration.parse_env_id(env_id)
    newest = gym.envs.registration.find_highest_version(namespace, name)
    if version is None or newest is None or version >= newest:
        return None
    newer = env_id.replace(f"-v{version}", f"-v{newest}")
    return f"note: gymnasium calls {env_id} out of date; v4 is the default for CleanRL's published figures; {newer} runs too"


# ---- envs ----


def fast_render(env: gym.Env[Any, Any]) -> gym.Env[Any, Any]:
    """MuJoCo on a software GL spends ~85% of a frame on the shadow map: evaluation videos go without it."""
    vis = getattr(getattr(env.unwrapped, "model", None), "vis", None)
    if vis is not None:
        vis.quality.shadowsize = 0
        vis.quality.offsamples = 0
    return env


# ---- torch ----


def setup_torch(args: RunArgs) -> torch.device:
    """Seeds (a resume then restores torch's generator from the checkpoint), threads, and the device."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    return torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")


def lr_factor(schedule: str, progress: float) -> float:
    """The learning rate's factor at `progress` (0 to 1) of the run: constant, linear to 0, or cosine to 0."""
    return {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 + 0.5 * math.cos(math.pi * progress)}[schedule]


M = TypeVar("M", bound=torch.nn.Module)
B = TypeVar("B")
R = TypeVar("R", bound=RunArgs)


def make_update_step(
    agent: M, optimizer: torch.optim.Optimizer, loss_fn: Callable[[M, B, R], tuple[torch.Tensor, torch.Tensor]], args: R
) -> Callable[[B], torch.Tensor]:
    """One minibatch step: the loss, backward, global gradient clipping, Adam; then a signal may stop the run. --compile
    compiles the loss (AOTAutograd compiles its backward too) and the clipped Adam step, as two graphs: backward() and
    zero_grad() break a graph. On CUDA each graph is replayed as a CUDA graph ("reduce-overhead"): one launch, not one
    per kernel from Python, which is what small networks wait on."""
    cuda_graphs = args.compile and next(agent.parameters()).device.type == "cuda"

    def optimizer_step() -> None:
        torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm, foreach=True)
        optimizer.step()

    if args.compile:
        mode = "reduce-overhead" if cuda_graphs else None
        loss_fn, optimizer_step = torch.compile(loss_fn, mode=mode), torch.compile(optimizer_step, mode=mode)

    def update_step(mb: B) -> torch.Tensor:
        if cuda_graphs:  # a new step: the graphs may now overwrite their last outputs
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad(set_to_none=True)
        loss, stats = loss_fn(agent, mb, args)
        loss.backward()
        optimizer_step()
        safe_point()
        return stats.clone() if cuda_graphs else stats  # kept past the next replay, which reuses the graph's memory

    return update_step


def policy_call(
    fn: Callable[[torch.Tensor], torch.Tensor], args: RunArgs, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The rollout's policy call, CPU tensors in and out. On CUDA with --compile it is one CUDA graph replay (the copies
    to and from the GPU stay outside the graph); on a CPU compiling it does not pay."""
    call = torch.compile(fn, mode="reduce-overhead") if args.compile and device.type == "cuda" else fn
    return lambda obs: call(obs.to(device)).cpu()


# ---- stopping on a signal ----


class Interrupted(Exception):
    """A signal stopped the run at a safe point, its last whole iteration saved: cli exits with EXIT_INTERRUPTED."""


@dataclass
class StopRequest:
    run: "Run | None" = None  # the training run that SIGTERM, SIGINT and SIGUSR1 stop
    signum: int | None = None  # set by the signal's handler; acted on at the next safe point


STOP = StopRequest()


def safe_point() -> None:
    """Called after every env step, minibatch step and evaluation step: if a signal came, the run writes its last whole
    iteration and stops here, losing only the iteration in progress."""
    if STOP.run is not None and STOP.signum is not None:
        STOP.run.stop(STOP.signum)


# ---- the run directory ----


def load_checkpoint(
    path: str | Path, algos: Sequence[str], fix: str = "pass a run's checkpoints/latest.pt or best.pt"
) -> StateDict:
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


def run_name(args: dict[str, Any]) -> str:
    """A run directory's name, from its arguments."""
    return f"{args['env_id'].replace('/', '-')}__{args['exp_name']}__seed{args['seed']}"


class Start(NamedTuple):
    """How a run starts, decided before anything is written."""

    run_dir: Path
    ckpt: StateDict | None  # the checkpoint it resumes (or, for --eval-checkpoint, evaluates)
    init: StateDict | None  # the --init-from checkpoint of a fresh run


def load_init(args: RunArgs, algos: Sequence[str]) -> StateDict:
    """The --init-from checkpoint, if it fits: of one of `algos`, an env with the same spaces (another reward, -v4 to
    -v5), the same networks and preprocessing."""
    assert args.init_from is not None
    init = load_checkpoint(args.init_from, algos)
    saved, now = init["args"], asdict(args)
    differ = [k for k in INIT_SAME if k in saved and k in now and json.dumps(saved[k]) != json.dumps(now[k])]
    if differ:
        trained = ", ".join(f"--{k.replace('_', '-')} {saved[k]!r}" for k in differ)
        raise UsageError(f"--init-from {args.init_from} was trained with {trained}: pass the same to start from it")
    if saved["env_id"] != args.env_id and spaces(saved["env_id"]) != spaces(args.env_id):
        raise UsageError(
            f"--init-from {args.init_from} was trained on {saved['env_id']}, whose spaces differ from {args.env_id}'s"
        )
    return init


def spaces(env_id: str) -> tuple[gym.Space[Any], gym.Space[Any]]:
    """An env's observation and action spaces (Box equality: shape, dtype and bounds)."""
    try:
        env = gym.make(env_id)
    except Exception as e:  # the checkpoint's env is not installed here
        raise UsageError(f"cannot make env {env_id!r} to compare its spaces ({str(e).splitlines()[0]})")
    env.close()
    return env.observation_space, env.action_space


def open_run(args: RunArgs, algo: str, init_sources: Sequence[str] = ()) -> Start:
    """Fresh run, resume or evaluation, decided before anything is written."""
    if args.eval_checkpoint:
        return Start(Path(args.eval_checkpoint).parent, load_checkpoint(args.eval_checkpoint, (algo,)), None)
    run_dir = Path(args.runs_dir) / run_name(asdict(args))
    latest = run_dir / "checkpoints" / "latest.pt"
    if not args.resume and run_dir.exists():
        raise UsageError(f"{run_dir} exists: pass --resume to continue it, or another --exp-name/--seed/--runs-dir")
    if not args.resume or not latest.exists():
        return Start(run_dir, None, load_init(args, (algo, *init_sources)) if args.init_from else None)
    ckpt = load_checkpoint(latest, (algo,), fix="delete it to restart the run from step 0")
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
    return Start(run_dir, ckpt, None)


@dataclass
class Timings:
    """Seconds of one iteration, a row of timings.jsonl: the rollout (which holds the policy's and the envs' time), the
    update, then what the run adds: evaluation, and the writing of metrics, TensorBoard and checkpoints."""

    policy_forward_s: float = 0.0
    env_step_s: float = 0.0
    rollout_s: float = 0.0
    update_s: float = 0.0
    eval_s: float = 0.0
    io_s: float = 0.0


class Run:
    """Everything a run writes: metrics.json, timings.jsonl, logs/train.log, TensorBoard, checkpoints, videos. A resume
    rewinds all of them to the checkpoint, so curves have no gap and no duplicate.

    best.pt is written as checkpoints/best-next.pt when an evaluation beats the best, and becomes best.pt when latest.pt
    has caught up with it: a kill -9 in between cannot leave a best.pt from a timeline the resume throws away."""

    def __init__(
        self, args: RunArgs, algo: str, total_steps: int, init_sources: Sequence[str] = (), group_size: int | None = None
    ) -> None:
        start = open_run(args, algo, init_sources)
        # -- nothing has been written before this line --
        self.args, self.algo, self.dir, self.total_steps = args, algo, start.run_dir, total_steps
        self.ckpt, self.init = start.ckpt, start.init
        self.capture_video = args.capture_video
        self.iteration = self.ckpt["iteration"] if self.ckpt else 0
        self.metrics = self.ckpt["metrics"] if self.ckpt else self.new_metrics(group_size)
        self.global_step = self.last_ckpt_step = self.metrics["global_step"]
        self.state: dict[str, Stateful] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.wandb: Any = None
        self.ckpt_s = 0.0
        self.metrics_text = ""  # metrics.json as last written
        self.whole: tuple[StateDict, str] | None = None  # the last whole iteration: what a signal's stop writes
        self.handlers: dict[int, Any] = {}
        self.log = logging.getLogger(f"{algo}.{self.dir}")
        if args.eval_checkpoint:  # an evaluation writes nothing in the run directory
            return
        for sub in ("logs", "checkpoints", "videos"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.rewind()
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(self.dir / "logs" / "train.log")):
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            self.log.addHandler(handler)
        if args.track:  # before the SummaryWriter, whose scalars wandb mirrors; a resume continues the same W&B run
            self.start_wandb()
        self.writer = SummaryWriter(str(self.dir), purge_step=self.global_step + 1 if self.ckpt else None)
        self.t_start, self.wall_time_before = time.perf_counter(), self.metrics["wall_time_s"]
        self.metrics["status"] = "running"  # also after an interruption
        self.flush()
        if threading.current_thread() is threading.main_thread():  # where Python runs signal handlers
            self.handlers = {s: signal.signal(s, self.on_signal) for s in STOP_SIGNALS}
            STOP.run, STOP.signum = self, None

    def new_metrics(self, group_size: int | None) -> dict[str, Any]:
        args = self.args
        init_from = None
        if self.init:  # where a fine-tuning run started (plot.py reads it) and the loaded policy's last evaluation
            source = {k: self.init["metrics"][k] for k in ("env_id", "algo", "exp_name", "seed", "wall_time_s")}
            init_from = {"path": args.init_from, "run": run_name(source), **source, "global_step": self.init["global_step"]}
            init_from["eval_return"] = (self.init["metrics"]["eval"]["mean_return"] or [None])[-1]
        return {
            "env_id": args.env_id,
            "algo": self.algo,
            "exp_name": args.exp_name,
            "seed": args.seed,
            "group_size": group_size,
            "init_from": init_from,
            "args": asdict(args),
            "config": config_record(args.config),  # the --config file's path and text, as the run read it
            "status": "running",
            "completed": False,
            "global_step": 0,
            "total_timesteps": args.total_timesteps,
            "sps": 0.0,
            "wall_time_s": 0.0,
            "best_eval_return": None,
            "train": {"global_step": [], "episodic_return": [], "episodic_length": []},
            "eval": {"global_step": [], "mean_return": [], "std_return": []},
        }

    def rewind(self) -> None:
        """Back to the checkpoint (or to nothing): half-written files, timings rows and curves past it, a best.pt of a
        lost timeline."""
        for stale in self.dir.rglob("*.tmp*"):  # left by a kill -9 in the middle of an atomic write
            stale.unlink()
        best_next = self.dir / "checkpoints" / "best-next.pt"
        if best_next.exists():  # kept if latest.pt caught up with it before the kill, else from a lost timeline
            if self.ckpt and torch.load(best_next, weights_only=True)["global_step"] <= self.global_step:
                os.replace(best_next, best_next.with_name("best.pt"))
            else:
                best_next.unlink()
        kept = []
        timings = self.dir / "timings.jsonl"
        for line in timings.read_text().splitlines() if self.ckpt and timings.exists() else []:
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by kill -9 is dropped
                if json.loads(line)["iteration"] <= self.iteration:
                    kept.append(line + "\n")
        for old in [] if self.ckpt else self.dir.glob("events.out.tfevents.*"):  # fresh start: no stale curves
            old.unlink()
        atomic_write(timings, lambda tmp: Path(tmp).write_text("".join(kept)))

    def start_wandb(self) -> None:
        import wandb

        self.wandb, wandb_id = wandb, self.metrics.setdefault("wandb_id", os.urandom(4).hex())
        args = self.args
        try:
            where: dict[str, Any] = {
                "project": args.wandb_project_name,
                "entity": args.wandb_entity,
                "name": self.dir.name,
                "dir": self.dir,
            }
            wandb.init(id=wandb_id, resume="allow", config=asdict(args), sync_tensorboard=True, **where)
        except Exception as e:  # not logged in, no network: nothing trained yet, so the same command with --resume
            raise UsageError(f"--track: W&B did not start ({e}); `wandb login` or WANDB_MODE=offline, then --resume")

    def restore(self, **state: Stateful) -> None:
        """Keeps `state` (an `agent` module, an `optimizer`, statistics) for the checkpoints; loads it from the checkpoint
        of a resume or an evaluation, or the networks and observation statistics of --init-from."""
        self.state = state
        agent, optimizer = state["agent"], state.get("optimizer")
        self.optimizer = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
        assert isinstance(agent, torch.nn.Module)
        device = next(agent.parameters()).device
        on = f"on {device}" + (" (--cuda: CUDA is not available)" if self.args.cuda and device.type == "cpu" else "")
        if note := version_note(self.args.env_id):
            self.log.info(note)
        if self.init and not self.ckpt:
            self.start_from(self.init, agent)
        if not self.ckpt:
            self.log.info(f"run directory {self.dir}; {self.total_steps:,} steps {on}")
            self.snapshot()
            return
        try:
            for k, v in state.items():
                v.load_state_dict(self.ckpt[k])
        except RuntimeError:  # a size mismatch: the networks of another env's spaces or other arguments
            raise UsageError(f"a checkpoint of {self.ckpt['args']['env_id']} does not fit {self.args.env_id} as configured")
        torch.set_rng_state(self.ckpt["rng"]["torch"])
        if self.ckpt["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.ckpt["rng"]["cuda"])
        self.log.info(f"resuming {self.dir} from step {self.global_step:,} (iteration {self.iteration}) {on}")
        self.snapshot()

    def start_from(self, init: StateDict, agent: torch.nn.Module) -> None:
        """--init-from: the loaded run's networks and observation statistics; the optimizer, step count, schedules, RNG
        and reward statistics start fresh, as with rl-zoo3's --trained-agent."""
        own = agent.state_dict().keys()  # a PPO checkpoint's critic stays behind in GRPO, which has none
        fresh = () if getattr(self.args, "init_critic", True) else ("critic",)  # PPO's --no-init-critic: the actor only
        try:
            loaded = agent.load_state_dict(
                {k: v for k, v in init["agent"].items() if k in own and not k.startswith(fresh)}, strict=False
            )
        except RuntimeError:  # checked arguments, so a checkpoint written by other code
            raise UsageError(f"the networks in --init-from {self.args.init_from} do not fit this script's")
        if any(not k.startswith(fresh) for k in loaded.missing_keys):
            raise UsageError(f"the networks in --init-from {self.args.init_from} do not fit this script's")
        if "obs_norm" in self.state:
            self.state["obs_norm"].load_state_dict(init["obs_norm"])
        if "ref_agent" in self.state:  # GRPO's reference policy starts as the loaded policy
            self.state["ref_agent"].load_state_dict(agent.state_dict())
        source = f"{init['algo']}.py on {init['args']['env_id']}, step {init['global_step']:,}"
        self.log.info(f"starting from {self.args.init_from} ({source}{', a fresh critic' if fresh else ''})")

    def checkpoint(self) -> StateDict:
        """What latest.pt holds but the metrics: the state's tensors, the RNG, the step."""
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        ckpt = {"algo": self.algo, "format": CHECKPOINT_FORMAT, "args": asdict(self.args), "rng": rng}
        ckpt |= {"iteration": self.iteration, "global_step": self.global_step}
        return ckpt | {k: v.state_dict() for k, v in self.state.items()}

    def save(self, name: str, ckpt: StateDict | None = None) -> None:
        ckpt = ckpt or self.checkpoint() | {"metrics": self.metrics}
        atomic_write(self.dir / "checkpoints" / name, lambda tmp: torch.save(ckpt, tmp))

    def promote_best(self) -> None:
        """best-next.pt becomes best.pt once latest.pt has caught up with it."""
        best_next = self.dir / "checkpoints" / "best-next.pt"
        if best_next.exists():
            os.replace(best_next, best_next.with_name("best.pt"))

    def snapshot(self) -> None:
        """The last whole iteration, in memory: the loop changes the networks, statistics and curves in place before the
        next one ends. A copy of the tensors (small next to an iteration) and the metrics.json just written."""
        if not self.args.eval_checkpoint:
            self.whole = copy.deepcopy(self.checkpoint()), self.metrics_text

    def on_signal(self, signum: int, frame: object) -> None:
        """Only notes the signal (the loop acts on it at a safe point); a second one acts as it would without a run."""
        STOP.signum = signum
        for s, handler in self.handlers.items():
            signal.signal(s, handler)

    def stop(self, signum: int) -> NoReturn:
        """A signal's stop: the last whole iteration becomes latest.pt and metrics.json (timings.jsonl has its rows and no
        more), then Interrupted. A resume continues from it with no gap and no duplicate in any curve."""
        assert self.whole is not None
        ckpt, text = self.whole
        self.metrics = json.loads(text) | {"status": "interrupted"}
        self.save("latest.pt", ckpt | {"metrics": self.metrics})
        self.promote_best()  # its step is at most the last whole iteration's
        step, name = ckpt["global_step"], signal.Signals(signum).name
        self.log.warning(f"{name}: stopped; latest.pt holds step {step:,}, `--resume` continues (exit {EXIT_INTERRUPTED})")
        self.close()
        raise Interrupted(f"{name} at step {self.global_step:,}")

    def episode(self, global_step: int, episodic_return: float, episodic_length: int) -> None:
        train = self.metrics["train"]
        train["global_step"].append(int(global_step))
        train["episodic_return"].append(float(episodic_return))
        train["episodic_length"].append(int(episodic_length))
        self.writer.add_scalar("charts/episodic_return", episodic_return, global_step)
        self.writer.add_scalar("charts/episodic_length", episodic_length, global_step)

    def end_iteration(
        self, iteration: int, global_step: int, stats: dict[str, float], timings: Timings, make_eval_env: MakeEnv, act: Policy
    ) -> None:
        """The NaN stop, evaluation and checkpoint when due, metrics.json, TensorBoard, the log, timings.jsonl's row."""
        steps = global_step - self.global_step
        self.iteration, self.global_step, m = iteration, global_step, self.metrics
        t_eval = time.perf_counter()
        agent = self.state["agent"]
        assert isinstance(agent, torch.nn.Module)
        params = torch.cat([p.detach().reshape(-1) for p in agent.parameters()])
        if not (all(math.isfinite(v) for v in stats.values()) and bool(params.isfinite().all())):
            m["status"] = "diverged"
            error = f"training diverged (NaN/inf) at step {global_step:,}; latest.pt holds step {self.last_ckpt_step:,}"
            self.log.error(error)
            self.close()
            raise FloatingPointError(f"{error}: lower --learning-rate or --max-grad-norm")
        final = global_step >= self.total_steps
        m["global_step"] = global_step
        if final:
            m["completed"], m["status"] = True, "completed"
        last_eval_step = (m["eval"]["global_step"] or [0])[-1]
        eval_return = None
        if self.args.eval_every and (global_step - last_eval_step >= self.args.eval_every or final):
            eval_return = self.evaluate(make_eval_env, act)
        best = eval_return is not None and (m["best_eval_return"] is None or eval_return > m["best_eval_return"])
        t_io = time.perf_counter()
        m["wall_time_s"] = self.wall_time_before + t_io - self.t_start
        m["sps"] = sps = global_step / m["wall_time_s"]
        lr = float(self.optimizer.param_groups[0]["lr"]) if self.optimizer else math.nan
        for tag, value in {**stats, "charts/learning_rate": lr, "charts/SPS": sps}.items():
            self.writer.add_scalar(tag, value, global_step)
        if best:  # saved with this step's metrics
            m["best_eval_return"] = eval_return
            self.save("best-next.pt")
        self.flush()
        timings.eval_s = t_io - t_eval
        timings.io_s = time.perf_counter() - t_io + self.ckpt_s
        time_s = timings.rollout_s + timings.update_s + timings.eval_s + timings.io_s  # phases in sequence
        row = {"iteration": iteration, "global_step": global_step, "time_s": time_s, "sps": steps / time_s}
        with open(self.dir / "timings.jsonl", "a") as f:  # a kill -9 can cut only this line, which a resume drops
            f.write(json.dumps(row | asdict(timings)) + "\n")
        t_ckpt = time.perf_counter()
        if final or (self.args.checkpoint_every and global_step - self.last_ckpt_step >= self.args.checkpoint_every):
            self.last_ckpt_step = global_step
            self.save("latest.pt")  # last: a checkpoint never runs ahead of the records a kill -9 could lose
            self.promote_best()
        self.snapshot()
        self.ckpt_s = time.perf_counter() - t_ckpt  # the next row's io_s counts it
        self.log_progress(sps, eval_return)

    def log_progress(self, sps: float, eval_return: float | None) -> None:
        step, total = self.global_step, self.total_steps
        rets = self.metrics["train"]["episodic_return"][-10:]
        eta = max(total - step, 0) / max(sps, 1e-9)
        line = f"step {step:,}/{total:,} ({100 * step / total:.0f}%) | SPS {sps:,.0f}"
        if rets:
            line += f" | return {np.mean(rets):,.1f} (last {len(rets)} episodes)"
        if eval_return is not None:
            line += f" | eval {eval_return:,.1f}"
        self.log.info(line + f" | ETA {int(eta // 3600)}h{int(eta % 3600 // 60):02d}m{int(eta % 60):02d}s")

    def evaluate(self, make_eval_env: MakeEnv, act: Policy) -> float:
        """Deterministic episodes on fixed seeds, the best of them filmed; their mean return."""
        args = self.args
        seeds = [1_000_000 * (1 + args.seed) + k for k in range(args.eval_episodes)]
        with make_eval_env(None) as env:
            returns = np.array([run_episode(env, act, seed) for seed in seeds])
        mean, std = float(returns.mean()), float(returns.std())
        if args.eval_checkpoint:  # print, film next to the checkpoint (or to --video-path), nothing else
            print(f"{args.eval_checkpoint} on {args.env_id}: return {mean:.2f} +- {std:.2f} over {len(seeds)} episodes")
            video = Path(args.video_path or Path(args.eval_checkpoint).with_suffix(".mp4"))
        else:
            video = self.dir / "videos" / f"eval-step{self.global_step:09d}.mp4"
            self.metrics["eval"]["global_step"].append(self.global_step)
            self.metrics["eval"]["mean_return"].append(mean)
            self.metrics["eval"]["std_return"].append(std)
            self.writer.add_scalar("eval/mean_return", mean, self.global_step)
            self.writer.add_scalar("eval/std_return", std, self.global_step)
        if self.capture_video:
            try:
                record_video(make_eval_env, act, seeds[int(returns.argmax())], video)
                if self.wandb:
                    self.wandb.log({"videos/eval": self.wandb.Video(str(video))})
            except Exception as e:  # no renderer here: keep training, say why once
                self.log.warning(f"video capture failed ({type(e).__name__}: {e}); continuing without videos")
                self.capture_video = False
        return mean

    def evaluate_checkpoint(self, make_eval_env: MakeEnv, policy: MeanPolicy) -> None:
        """--eval-checkpoint: evaluate the saved policy; with --export, write it instead (the example observations are
        the first evaluation episode's start), and nothing else."""
        if not self.args.export:
            self.evaluate(make_eval_env, policy.act)
            return
        with make_eval_env(None) as env:
            obs = np.asarray(env.reset(seed=1_000_000 * (1 + self.args.seed))[0])
        export_policy(policy, np.stack([obs, obs]), self.args.export)

    def flush(self) -> None:
        self.metrics_text = json.dumps(self.metrics, indent=1)
        atomic_write(self.dir / "metrics.json", lambda tmp: Path(tmp).write_text(self.metrics_text))
        self.writer.flush()

    def close(self) -> None:
        for s, handler in self.handlers.items():  # the process's own again: a test, or tune.py, may start another run
            signal.signal(s, handler)
        STOP.run = STOP.signum = None
        self.flush()
        self.writer.close()
        if self.wandb:
            self.wandb.finish()
        for handler in list(self.log.handlers):
            handler.close()
            self.log.removeHandler(handler)


def run_episode(
    env: gym.Env[Any, Any], act: Policy, seed: int, on_frame: Callable[[Any], object] | None = None, frame_every: int = 1
) -> float:
    """One episode of `act` from `env.reset(seed=seed)`: its return. `on_frame` gets every frame_every-th frame."""
    obs, _ = env.reset(seed=seed)
    episodic_return, length, done = 0.0, 0, False
    while not done:
        if on_frame and length % frame_every == 0:
            on_frame(env.render())
        obs, reward, terminated, truncated, _ = env.step(act(np.asarray(obs)[None])[0])
        safe_point()
        episodic_return += float(reward)
        length += 1
        done = terminated or truncated
    return episodic_return


def record_video(make_eval_env: MakeEnv, act: Policy, seed: int, path: Path) -> None:
    """Film an episode by re-running it from its seed (all is deterministic), at most ~30 frames per simulated second."""
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)  # --video-path may name a new directory
    with make_eval_env("rgb_array") as env:
        env_fps = env.metadata.get("render_fps") or 30
        frame_every = max(1, round(env_fps / 30))
        try:
            writer: Any = imageio.get_writer(tmp, fps=env_fps / frame_every, macro_block_size=1)
            with writer:
                run_episode(env, act, seed, on_frame=writer.append_data, frame_every=frame_every)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


A = TypeVar("A", bound=RunArgs)


def cli(main: Callable[[A], object], args_type: type[A], algo: str, default: A | None = None) -> None:
    """tyro reports a bad flag in a multi-line box, and main's errors are exceptions: each becomes one line on stderr.
    With --eval-checkpoint, the arguments are read again with the run's as defaults: the flags given win."""
    captured = io.StringIO()
    try:
        argv = config_flags(args_type, sys.argv[1:]) + sys.argv[1:]  # a --config file's flags first: the flags given win
        with contextlib.redirect_stderr(captured):
            args = tyro.cli(args_type, args=argv) if default is None else tyro.cli(args_type, args=argv, default=default)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as e:
        print(f"error: {tyro_message(captured.getvalue())} (see --help)" if e.code else captured.getvalue(), file=sys.stderr)
        raise
    sys.stderr.write(captured.getvalue())
    try:
        check_export(args.export, args.eval_checkpoint)
        if args.eval_checkpoint and default is None:
            names, own = {f.name for f in fields(args)}, RESUME_MAY_DIFFER + EVAL_OWN
            saved = load_checkpoint(args.eval_checkpoint, (algo,))["args"]
            saved = {k: v for k, v in saved.items() if k in names and k not in own}
            return cli(main, args_type, algo, default=replace(args_type(), **saved))
        main(args)
    except (UsageError, FloatingPointError, OSError) as e:  # training diverged; a --runs-dir that cannot be written
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UsageError) else 1)
    except Interrupted:  # the run's log said it
        sys.exit(EXIT_INTERRUPTED)
