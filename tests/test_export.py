"""--eval-checkpoint PATH --export FILE: every script writes its checkpoint's deterministic policy (runlib.MeanPolicy, the
module its evaluation runs) as torch.export's .pt2 or as ONNX. Driven on the evaluation's episodes, each file earns the
returns --eval-checkpoint records; a batch of observations gives the actions of its rows; bad input writes nothing."""

import numpy as np
import pytest
import torch

import runlib
from conftest import SCRIPTS, TINY, assert_clean_error, run_cli, run_script

EPISODES = 2
BUDGET = {"ppo_cnn_carracing": 32, "grpo_cnn_carracing": 100}  # one iteration; the MLP scripts' 256 steps are one too


@pytest.fixture(scope="module", params=SCRIPTS)
def checkpoint(request, tmp_path_factory):
    """(script, latest.pt of a tiny run of it): Hopper-v4's float64 observations and normalization, CarRacing's frames."""
    script, runs = request.param, tmp_path_factory.mktemp("runs")
    flags = [*TINY[script], "--total-timesteps", BUDGET.get(script, 256), "--eval-every", 0, "--no-capture-video"]
    result = run_script(script, *flags, "--runs-dir", runs)
    assert result.returncode == 0, result.stderr
    (run_dir,) = runs.iterdir()
    return script, run_dir / "checkpoints" / "latest.pt"


def evaluation(monkeypatch, capsys, script, ckpt):
    """--eval-checkpoint's returns, episode by episode, its evaluation env (the env each episode ran on), and the
    observations its policy saw with the actions it took."""
    returns, envs, steps, run_episode = [], [], [], runlib.run_episode

    def recorded(env, act, seed, *args, **kwargs):
        def acting(obs):
            steps.append((obs.copy(), act(obs)))
            return steps[-1][1]

        envs.append(env)
        returns.append(run_episode(env, acting, seed, *args, **kwargs))
        return returns[-1]

    monkeypatch.setattr(runlib, "run_episode", recorded)
    result = run_cli(monkeypatch, capsys, script, "--eval-checkpoint", ckpt, "--eval-episodes", EPISODES, "--no-capture-video")
    assert result.returncode == 0, result.stderr
    monkeypatch.undo()
    return returns, envs[0], steps


def export(monkeypatch, capsys, script, ckpt, path):
    result = run_cli(monkeypatch, capsys, script, "--eval-checkpoint", ckpt, "--export", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [result.stdout.strip()] and result.stdout.startswith(f"wrote {path}: ")
    assert result.stderr == ""
    return path


def loaded(path):
    """The file as a numpy policy, with nothing of this project: torch.export.load, or onnxruntime."""
    if path.suffix == ".pt2":
        module = torch.export.load(str(path)).module()
        return lambda obs: module(torch.from_numpy(obs)).numpy()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda obs: session.run(None, {"obs": obs})[0]


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_an_exported_policy_earns_the_evaluation_returns_and_acts_on_a_batch(
    monkeypatch, capsys, checkpoint, suffix, tmp_path
):
    script, ckpt = checkpoint
    returns, env, steps = evaluation(monkeypatch, capsys, script, ckpt)
    before = sorted(ckpt.parent.parent.rglob("*"))
    act = loaded(export(monkeypatch, capsys, script, ckpt, tmp_path / f"policy{suffix}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"policy{suffix}"]  # and nothing else, nor in the run
    assert sorted(ckpt.parent.parent.rglob("*")) == before
    seed = torch.load(ckpt, weights_only=True)["args"]["seed"]
    exported = [runlib.run_episode(env, act, 1_000_000 * (1 + seed) + k) for k in range(EPISODES)]
    print(f"{script} {suffix}: returns {exported}, --eval-checkpoint's {returns}")
    np.testing.assert_allclose(exported, returns, rtol=0, atol=1e-3)
    assert len(set(returns)) == EPISODES or script.endswith("carracing")  # real episodes, not one repeated
    # every action of the evaluation, from the file: CarRacing's few steps earn returns that hardly depend on them
    np.testing.assert_allclose(
        np.concatenate([act(obs) for obs, _ in steps]), np.concatenate([a for _, a in steps]), atol=1e-5
    )
    obs = np.stack([np.asarray(env.reset(seed=k)[0]) for k in range(5)])
    rows = np.concatenate([act(obs[i : i + 1]) for i in range(5)])
    batch = act(obs)
    assert batch.shape == rows.shape == (5, *env.action_space.shape)
    np.testing.assert_allclose(batch, rows, rtol=0, atol=1e-6)
    assert len({tuple(a) for a in batch.round(6)}) > 1  # the rows' own actions: different observations act differently


def test_bad_export_arguments_are_one_line_and_write_nothing(monkeypatch, capsys, tmp_path):
    script = "ppo_continuous"
    ckpt = tmp_path / "latest.pt"
    before = {"latest.pt"}
    ckpt.write_bytes(b"")  # never read: the refusals come first
    for args, expected in [
        (["--eval-checkpoint", ckpt, "--export", tmp_path / "policy.pt"], "unknown suffix '.pt'; use .pt2 or .onnx"),
        (["--eval-checkpoint", ckpt, "--export", tmp_path / "no" / "policy.onnx"], f"{tmp_path / 'no'} does not exist"),
        (["--export", tmp_path / "policy.onnx"], "pass --eval-checkpoint PATH with it"),
    ]:
        result = run_cli(monkeypatch, capsys, script, *args)
        assert result.returncode == 2
        assert_clean_error(result, expected)
        assert {p.name for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_torch_normalization_gives_the_bits_of_numpys_formula_live_and_frozen(dtype):
    """envlib.normalize_obs (float64 torch) gives the bits of the formula in numpy, live and frozen (--export)."""
    from envlib import ObsNormalizer

    rng, norm, clipped = np.random.default_rng(0), ObsNormalizer((11,), 1.5), False
    for _ in range(20):
        obs = (rng.normal(size=(7, 11)) * rng.uniform(0.01, 100, size=11) + 5).astype(dtype)
        live = norm(torch.from_numpy(obs), update=True).numpy()
        mean, var = norm.mean.numpy(), norm.var.numpy()
        numpy = np.minimum(np.maximum((obs - mean) / np.sqrt(var + 1e-8), -1.5), 1.5).astype(np.float32)
        frozen = norm.freeze()(torch.from_numpy(obs)).numpy()
        assert live.dtype == frozen.dtype == np.float32 and live.tobytes() == numpy.tobytes() == frozen.tobytes()
        clipped |= bool((np.abs(numpy) == 1.5).any())
    assert clipped
