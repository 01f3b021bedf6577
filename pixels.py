"""Frames as observations, for the CNN scripts: frame skip, grayscale, area resizing and a stack of the last frames, as
gymnasium wrappers (training and evaluation) and on EnvPool's batched envs, giving the same bytes on both backends."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import gymnasium as gym
import numpy as np

from envlib import Array, EnvPoolVectorEnv


class FrameArgs(Protocol):
    """The Args fields of a CNN script that say how frames become observations."""

    frame_skip: int
    grayscale: bool
    resize: Optional[tuple[int, int]]
    frame_stack: int
    max_negative_steps: Optional[int]


class FrameSkip(gym.Wrapper[Any, Any, Any, Any]):
    """Repeat the action `skip` frames, summing their rewards; end early after `max_negative_steps` steps of losses."""

    def __init__(self, env: gym.Env[Any, Any], skip: int, max_negative_steps: Optional[int] = None) -> None:
        super().__init__(env)
        self.skip, self.max_negative_steps, self.negative_steps = skip, max_negative_steps or math.inf, 0
        self.metadata = {**env.metadata, "render_fps": env.metadata.get("render_fps", 50) / skip}  # real-time videos

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None) -> tuple[Array, dict[str, Any]]:
        self.negative_steps = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Array) -> tuple[Array, float, bool, bool, dict[str, Any]]:
        total_reward = 0.0
        for _ in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total_reward += float(reward)
            if terminated or truncated:
                break
        self.negative_steps = self.negative_steps + 1 if total_reward < 0 else 0
        return obs, total_reward, terminated, truncated or self.negative_steps >= self.max_negative_steps, info


def area_weights(n_in: int, n_out: int) -> Array:
    """(n_out, n_in) weights of area resampling: output pixel i averages the input interval it covers."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo, hi, j = edges[:-1, None], edges[1:, None], np.arange(n_in)[None]
    return (np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None) / (hi - lo)).astype(np.float32)


@dataclass(frozen=True)
class Frames:
    """How frames become observations: frame skip, grayscale, area resizing, a stack of the last frames."""

    skip: int
    grayscale: bool
    resize: Optional[tuple[int, int]]
    stack: int
    max_negative_steps: Optional[int]

    @staticmethod
    def of(args: FrameArgs) -> "Frames":
        return Frames(args.frame_skip, args.grayscale, args.resize, args.frame_stack, args.max_negative_steps)

    def preprocess(self, frames: Array) -> Array:
        """(N, H, W, 3) uint8 -> (N, h, w, channels) uint8 on both backends: gymnasium's grayscale, area resizing."""
        if self.grayscale:
            x = frames.astype(np.float64)
            frames = (x[..., 0:1] * 0.2125 + x[..., 1:2] * 0.7154 + x[..., 2:3] * 0.0721).astype(np.uint8)
        if self.resize:
            rows, cols = area_weights(frames.shape[1], self.resize[0]), area_weights(frames.shape[2], self.resize[1])
            resized = rows @ frames.transpose(0, 3, 1, 2).astype(np.float32) @ cols.T  # (N, channels, h, w)
            frames = np.rint(resized).astype(np.uint8).transpose(0, 2, 3, 1)
        return frames

    def wrap(self, env: gym.Env[Any, Any]) -> gym.Env[Any, Any]:
        env = FrameSkip(env, self.skip, self.max_negative_steps)
        shape = self.preprocess(np.zeros((1, *(env.observation_space.shape or ())), np.uint8)).shape[1:]
        space = gym.spaces.Box(0, 255, shape, np.uint8)
        env = gym.wrappers.TransformObservation(env, lambda frame: self.preprocess(frame[None])[0], space)
        return gym.wrappers.FrameStackObservation(env, self.stack)  # oldest first, the first frame repeated at reset


class FramesEnvPool(EnvPoolVectorEnv):
    """EnvPool's batched env as a SAME_STEP vector env with Frames' wrappers (EnvPool's own autoreset is NEXT_STEP)."""

    def __init__(self, env_id: str, frames: Frames, num_envs: int, max_episode_steps: Optional[int]) -> None:
        super().__init__(env_id, num_envs, max_episode_steps)
        self.frames = frames

    def reset(self, *, seed: int | Sequence[int]) -> tuple[Array, dict[str, Any]]:
        self.raw = super().reset(seed=seed)[0]  # the latest frame of each env (EnvPool answers in the order of the ids asked)
        self.stack = np.repeat(self.frames.preprocess(self.raw)[:, None], self.frames.stack, axis=1)  # as gymnasium's
        self.negative_steps = np.zeros(self.num_envs)  # consecutive steps of negative reward, as FrameSkip counts them
        return self.stack.copy(), {}

    def step(self, actions: Array) -> tuple[Array, Array, Array, Array, dict[str, Any]]:
        n = self.num_envs
        reward, terminated, truncated = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        live = np.arange(n, dtype=np.int32)
        for _ in range(self.frames.skip):  # FrameSkip on the batch: an env that ends stops there
            raw, r, term, trunc, _ = self.pool.step(actions[live], live)
            self.raw[live] = raw
            reward[live] += r
            terminated[live] = term
            truncated[live] = trunc
            live = live[~(term | trunc)]
            if not len(live):
                break
        self.negative_steps = np.where(reward < 0, self.negative_steps + 1, 0)
        truncated |= self.negative_steps >= (self.frames.max_negative_steps or math.inf)
        self.stack = np.concatenate([self.stack[:, 1:], self.frames.preprocess(self.raw)[:, None]], axis=1)
        done = np.flatnonzero(terminated | truncated)
        info = {}
        if len(done):
            info["final_obs"] = self.stack.copy()
            self.stack[done] = self.frames.preprocess(self.pool.reset(done)[0])[:, None]
            self.negative_steps[done] = 0
        return self.stack.copy(), reward, terminated, truncated, info
