"""First contact with a new env or a new machine: an env without a time limit, a machine without libEGL, the default
env's version. Each as a user meets it: the script's command line."""

import os
import subprocess
import sys

import gymnasium as gym
import pytest

from conftest import ROOT, TINY, assert_clean_error, read_run, run_cli

SCRIPTS = ["ppo_continuous", "ppo_beta_continuous", "grpo_continuous"]


class Endless(gym.Env):
    """A one-dimensional env that never ends by itself."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample() * 0, {}

    def step(self, action):
        return self.observation_space.sample() * 0, 0.0, False, False, {}


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_env_without_a_time_limit_is_refused_where_an_episode_must_end(monkeypatch, capsys, tmp_path, script):
    """Evaluation (and every GRPO rollout) runs episodes to their end: without a time limit it would loop forever."""
    if "EndlessTest-v0" not in gym.registry:
        gym.register("EndlessTest-v0", entry_point=Endless)
    runs = ["--runs-dir", tmp_path / "runs"]
    result = run_cli(monkeypatch, capsys, script, "--env-id", "EndlessTest-v0", *runs)
    assert_clean_error(result, "EndlessTest-v0 has no time limit")
    assert "--max-episode-steps" in result.stderr and not (tmp_path / "runs").exists()
    if script != "grpo_continuous":  # PPO without evaluation never needs an episode to end
        flags = ["--env-id", "EndlessTest-v0", "--num-steps", 64, "--num-minibatches", 2, "--update-epochs", 1]
        result = run_cli(monkeypatch, capsys, script, *flags, "--total-timesteps", 128, "--eval-every", 0, *runs)
        assert result.returncode == 0, result.stderr
        assert read_run(tmp_path / "runs" / f"EndlessTest-v0__{script}__seed1")[0]["completed"]
        result = run_cli(monkeypatch, capsys, script, *flags, "--eval-every", 0, "--reward-delay", "episode", *runs)
        assert_clean_error(result, "EndlessTest-v0 has no time limit and --reward-delay episode pays at the end")


def run_without_egl(tmp_path, *flags):
    """The script where libEGL cannot load: MUJOCO_GL unset and LD_LIBRARY_PATH first finding libEGL files that are not
    libraries (as on a CUDA box without the EGL library)."""
    fake = tmp_path / "fake-gl"
    fake.mkdir()
    for name in ("libEGL.so", "libEGL.so.1"):
        (fake / name).write_text("not a library")
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    env |= {"LD_LIBRARY_PATH": str(fake), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "ppo_continuous.py"), *TINY["ppo_continuous"], "--runs-dir", tmp_path / "runs"]
    return subprocess.run([*map(str, command), *map(str, flags)], capture_output=True, text=True, env=env, timeout=300)


def test_a_run_that_films_nothing_needs_no_gl_library(tmp_path):
    result = run_without_egl(
        tmp_path, "--total-timesteps", 256, "--eval-every", 128, "--eval-episodes", 1, "--no-capture-video"
    )
    assert result.returncode == 0, result.stderr
    assert "eval" in result.stdout and "Traceback" not in result.stderr


def test_a_run_that_films_without_egl_says_what_is_missing_in_one_line_and_trains(tmp_path):
    result = run_without_egl(tmp_path, "--total-timesteps", 256, "--eval-every", 128, "--eval-episodes", 1)
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert warning.startswith("warning: no videos: libEGL cannot load") and "--no-capture-video" in warning
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert read_run(run_dir)[0]["completed"] and not list((run_dir / "videos").iterdir())


def test_the_default_env_says_once_in_plain_words_why_it_is_v4(tmp_path):
    """gymnasium's DeprecationWarning for v4 MuJoCo envs (colour codes and all) is not the run's second line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    flags = [*TINY["ppo_continuous"], "--total-timesteps", 128, "--eval-every", 0, "--runs-dir", tmp_path]
    result = subprocess.run(
        [sys.executable, str(ROOT / "ppo_continuous.py"), *map(str, flags)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout + result.stderr and "DeprecationWarning" not in result.stderr
    notes = [line for line in result.stdout.splitlines() if "note:" in line]
    assert len(notes) == 1 and "CleanRL's published figures" in notes[0] and "Hopper-v5 runs too" in notes[0]
    assert "note:" in result.stdout.splitlines()[0]
