"""The deterministic policy as one module: the code evaluation (and its videos) runs, and what `--export` writes as a
self-contained file (.pt2: torch.export's program, needs only torch; .onnx: ONNX, for onnxruntime and other runtimes).
"""

import contextlib
import copy
import io
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
from torch.distributions import Distribution

from config import UsageError, atomic_write
from envlib import Array, ObsNormalizer

EXPORT_SUFFIXES = (".pt2", ".onnx")  # torch.export's program (torch.export.load), or ONNX (onnxruntime)
ToEnv = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (policy's action, low, high) -> the env's


class Actor(Protocol):
    def dist(self, obs: torch.Tensor) -> Distribution: ...


class MeanPolicy(nn.Module):
    """The deterministic policy as one module, the code that evaluation (and its videos) runs and --export writes: a
    batch of the env's observations -> normalized (with a script's ObsNormalizer; frames are not) -> the mean of the
    agent's distribution -> to_env, the script's map to the env's action (the clip to the bounds, or the Beta's map)."""

    agent: Actor
    norm: Callable[[torch.Tensor], torch.Tensor] | None
    low: torch.Tensor
    high: torch.Tensor

    def __init__(
        self, agent: Actor, obs_norm: ObsNormalizer | None, low: torch.Tensor, high: torch.Tensor, to_env: ToEnv
    ) -> None:
        super().__init__()
        self.agent, self.obs_norm, self.to_env = agent, obs_norm, to_env  # agent, an nn.Module, becomes a submodule
        self.norm = obs_norm.normalize if obs_norm else None  # the running statistics of now: they change as the run trains
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs if self.norm is None else self.norm(obs)  # on the CPU, where the statistics are
        return self.to_env(self.agent.dist(x.to(self.low.device)).mean, self.low, self.high)

    def act(self, obs: Array) -> Array:
        """Evaluation's call: numpy observations in, numpy actions out."""
        with torch.inference_mode():
            return self(torch.from_numpy(obs)).cpu().numpy()

    def frozen(self) -> "MeanPolicy":
        """This policy on the CPU, its observation statistics copied into buffers (FrozenObsNorm): what --export writes."""
        frozen = MeanPolicy(copy.deepcopy(self.agent), None, self.low.cpu(), self.high.cpu(), self.to_env).cpu()
        if self.obs_norm:
            frozen.norm = self.obs_norm.freeze()  # a module: registered, its buffers exported with the network
        return frozen.eval().requires_grad_(False)  # a policy to run, not to train: its actions need no graph


def check_export(export: str | None, eval_checkpoint: str | None) -> None:
    """--export's refusals, before the checkpoint is read: then nothing is written."""
    if export is None:
        return
    if not eval_checkpoint:
        raise UsageError("--export writes the policy of a checkpoint: pass --eval-checkpoint PATH with it")
    path = Path(export)
    if path.suffix not in EXPORT_SUFFIXES:
        allowed = " or ".join(EXPORT_SUFFIXES)
        raise UsageError(f"--export {export}: unknown suffix {path.suffix!r}; use {allowed} (torch.export or ONNX)")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise UsageError(f"--export {export}: the directory {path.parent} does not exist or cannot be written")


def export_policy(policy: MeanPolicy, example_obs: Array, path: str) -> None:
    """Write policy.frozen() to `path`: .pt2 is torch.export's program (torch.export.load(path).module()(obs)), .onnx its
    ONNX translation (onnxruntime). The batch dimension is dynamic; `example_obs` (a batch of 2: torch.export specializes
    a size of 1) sets the rest of the observations' shape, and their dtype."""
    frozen, example = policy.frozen(), torch.from_numpy(example_obs)
    dynamic = {"obs": {0: torch.export.Dim("batch")}}
    logging.disable(logging.WARNING)  # the exporters' chatter (torch's loggers; a missing torchvision) is not the user's
    try:
        quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
        with quiet[0], quiet[1], warnings.catch_warnings(action="ignore"):
            if path.endswith(".pt2"):
                buffer = io.BytesIO()  # torch.export.save warns of a file name without .pt2, as atomic_write's temporary
                torch.export.save(torch.export.export(frozen, (example,), dynamic_shapes=dynamic), buffer)
                atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
            else:
                onnx = torch.onnx.export(frozen, (example,), dynamo=True, dynamic_shapes=dynamic, input_names=["obs"])
                assert onnx is not None  # dynamo=True returns the program
                atomic_write(path, lambda tmp: onnx.save(tmp, external_data=False))  # one file: the weights inside
    finally:
        logging.disable(logging.NOTSET)
    with torch.inference_mode():
        actions = frozen(example)
    obs, act = (", ".join(map(str, x.shape[1:])) for x in (example, actions))
    print(f"wrote {path}: the deterministic policy, observations (batch, {obs}) {example_obs.dtype} -> actions (batch, {act})")
