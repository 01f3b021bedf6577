"""--init-from: a run that starts from another run's checkpoint (GRPO after PPO, or a script after itself) acts as that
policy, keeps its observation statistics frozen unless told not to, resumes like any run, and refuses what does not fit
in one line with nothing written."""

import shutil

import pytest
import torch

from conftest import TINY, assert_clean_error, kill_at, read_run, run_cli, run_script

EVAL = ["--eval-episodes", 2, "--no-capture-video"]
TINY_LR = 1e-12  # Adam moves each weight by ~lr: too little to change a float32 weight


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    """A short PPO run on Hopper-v4 (2 iterations of 128 steps, an evaluation after each)."""
    runs_dir = tmp_path_factory.mktemp("source")
    args = [*TINY["ppo_continuous"], "--total-timesteps", 256, "--eval-every", 128, *EVAL, "--runs-dir", runs_dir]
    result = run_script("ppo_continuous", *args)
    assert result.returncode == 0, result.stderr
    return runs_dir / "Hopper-v4__ppo_continuous__seed1"


def first_eval_and_checkpoint(run_dir):
    metrics, _ = read_run(run_dir)
    return metrics, torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)


@pytest.mark.parametrize("script", ["grpo_continuous", "ppo_continuous"])
def test_a_run_from_a_ppo_checkpoint_acts_as_that_policy(runs_dir, ppo_run, script):
    """With a learning rate too small to change the weights and the loaded statistics frozen (the default), the first
    evaluation is the PPO run's last one; GRPO's fixed reference (--ref-update-every 0) is the loaded policy."""
    source_metrics, source = first_eval_and_checkpoint(ppo_run)
    ref = ["--ref-update-every", 0] if script == "grpo_continuous" else []
    args = [*TINY[script], "--total-timesteps", 300, "--eval-every", 100, *EVAL, "--learning-rate", TINY_LR, *ref]
    result = run_script(script, *args, "--init-from", ppo_run / "checkpoints" / "latest.pt", "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    (run_dir,) = runs_dir.iterdir()
    metrics, ckpt = first_eval_and_checkpoint(run_dir)
    assert metrics["eval"]["mean_return"][0] == pytest.approx(source_metrics["eval"]["mean_return"][-1], rel=1e-6)
    assert metrics["init_from"]["run"] == "Hopper-v4__ppo_continuous__seed1"
    assert metrics["init_from"]["algo"] == "ppo_continuous" and metrics["init_from"]["global_step"] == 256
    assert metrics["init_from"]["eval_return"] == source_metrics["eval"]["mean_return"][-1]
    assert metrics["completed"] and metrics["eval"]["global_step"][0] < 256  # its own steps start at 0
    for key in ("mean", "var", "count"):  # frozen: as loaded
        assert torch.equal(torch.as_tensor(ckpt["obs_norm"][key]), torch.as_tensor(source["obs_norm"][key]))
    if script == "grpo_continuous":  # no critic in GRPO; its reference is the loaded policy, exactly
        assert set(ckpt["ref_agent"]) == {k for k in source["agent"] if not k.startswith("critic")}
        for name, value in ckpt["ref_agent"].items():
            assert torch.equal(value, source["agent"][name]), name
    assert "starting from" in (run_dir / "logs" / "train.log").read_text()


def test_no_freeze_init_norm_keeps_updating_the_loaded_statistics(runs_dir, ppo_run):
    args = [*TINY["grpo_continuous"], "--total-timesteps", 200, "--eval-every", 0, "--no-capture-video"]
    source = torch.load(ppo_run / "checkpoints" / "latest.pt", weights_only=True)["obs_norm"]
    result = run_script(
        "grpo_continuous",
        *args,
        "--init-from",
        ppo_run / "checkpoints" / "latest.pt",
        "--no-freeze-init-norm",
        "--runs-dir",
        runs_dir,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = runs_dir.iterdir()
    stats = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["obs_norm"]
    assert stats["count"] >= source["count"] + 200  # the loaded statistics, updated with every step since
    assert not torch.equal(stats["mean"], source["mean"])


def test_a_fine_tuning_run_resumes_without_its_source_checkpoint(runs_dir, ppo_run, tmp_path):
    """After kill -9, --resume continues from the run's own checkpoint: the --init-from file is no longer needed."""
    source = tmp_path / "source.pt"
    shutil.copy(ppo_run / "checkpoints" / "latest.pt", source)
    args = [*TINY["grpo_continuous"], "--total-timesteps", 3000, "--eval-every", 1000, *EVAL, "--checkpoint-every", 200]
    args += ["--init-from", source, "--runs-dir", runs_dir]
    run_dir = runs_dir / "Hopper-v4__grpo_continuous_g3__seed1"
    assert 1200 <= kill_at("grpo_continuous", "after_checkpoint", 1200, *args)["global_step"] < 3000
    source.unlink()
    result = run_script("grpo_continuous", *args, "--resume")
    assert result.returncode == 0, result.stderr
    metrics, timings = read_run(run_dir)
    assert metrics["completed"] and metrics["init_from"]["path"] == str(source)
    steps = [row["global_step"] for row in timings]
    assert steps == sorted(set(steps)) and metrics["eval"]["global_step"] == sorted(set(metrics["eval"]["global_step"]))
    assert "resuming" in (run_dir / "logs" / "train.log").read_text()


def checkpoint_of(tmp_path, algo, **changes):
    """A checkpoint file that load_checkpoint reads (this version's format) with another algo's name."""
    import runlib

    path = tmp_path / f"{algo}.pt"
    torch.save({"algo": algo, "format": runlib.CHECKPOINT_FORMAT, **changes}, path)
    return path


def test_another_env_id_with_the_same_spaces_is_allowed_and_recorded(runs_dir, ppo_run):
    """Hopper-v4 -> Hopper-v5 (the same spaces): allowed, recorded in init_from, said in the log's first lines."""
    args = [*TINY["ppo_continuous"], "--env-id", "Hopper-v5", "--total-timesteps", 128, "--eval-every", 0]
    result = run_script("ppo_continuous", *args, "--init-from", ppo_run / "checkpoints" / "latest.pt", "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    metrics, _ = read_run(runs_dir / "Hopper-v5__ppo_continuous__seed1")
    assert metrics["env_id"] == "Hopper-v5" and metrics["init_from"]["env_id"] == "Hopper-v4"
    first_lines = (runs_dir / "Hopper-v5__ppo_continuous__seed1" / "logs" / "train.log").read_text().splitlines()[:3]
    assert any("starting from" in line and "on Hopper-v4" in line for line in first_lines), first_lines


def test_no_init_critic_loads_the_actor_and_a_fresh_critic(runs_dir, ppo_run):
    source = torch.load(ppo_run / "checkpoints" / "latest.pt", weights_only=True)["agent"]
    args = [*TINY["ppo_continuous"], "--total-timesteps", 128, "--eval-every", 0, "--learning-rate", TINY_LR]
    init = ["--init-from", ppo_run / "checkpoints" / "latest.pt", "--seed", 7]
    for flag, name in (("--no-init-critic", "fresh"), ("--init-critic", "loaded")):
        result = run_script("ppo_continuous", *args, *init, flag, "--exp-name", name, "--runs-dir", runs_dir)
        assert result.returncode == 0, result.stderr
    fresh, loaded = (
        torch.load(runs_dir / f"Hopper-v4__{n}__seed7" / "checkpoints" / "latest.pt", weights_only=True)["agent"]
        for n in ("fresh", "loaded")
    )

    def same(a, b):  # a learning rate of 1e-12 moves a weight by ~1e-12 at most
        return torch.allclose(a, b, rtol=0, atol=1e-9)

    for key, value in source.items():
        assert same(loaded[key], value), key  # everything loaded
        assert same(fresh[key], value) != key.startswith("critic"), key  # the actor only
    assert "a fresh critic" in (runs_dir / "Hopper-v4__fresh__seed7" / "logs" / "train.log").read_text()


@pytest.mark.parametrize(
    "script, flags, expected",
    [
        ("grpo_continuous", ["--env-id", "Walker2d-v4"], "was trained on Hopper-v4, whose spaces differ from Walker2d-v4's"),
        ("grpo_continuous", ["--hidden-sizes", 32, 32], "was trained with --hidden-sizes (64, 64)"),
        ("ppo_continuous", ["--no-norm-obs"], "was trained with --norm-obs True"),
        ("ppo_beta_continuous", [], "(ppo_continuous.py's, format 2) is not a checkpoint of this version of ppo_beta"),
        ("grpo_cnn_carracing", [], "is not a checkpoint of this version of grpo_cnn_carracing.py or ppo_cnn_carracing.py"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(
    monkeypatch, capsys, tmp_path, ppo_run, script, flags, expected
):
    args = ["--init-from", ppo_run / "checkpoints" / "latest.pt", *flags, "--runs-dir", tmp_path / "runs"]
    assert_clean_error(run_cli(monkeypatch, capsys, script, *args), expected)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "script, make, expected",
    [
        ("ppo_continuous", lambda p: checkpoint_of(p, "grpo_continuous"), "(grpo_continuous.py's, format 2) is not a"),
        ("ppo_continuous", lambda p: checkpoint_of(p, "ppo_beta_continuous"), "is not a checkpoint of this version of ppo_c"),
        ("grpo_continuous", lambda p: (p / "notes.pt").write_text("not a checkpoint") and p / "notes.pt", "cannot read"),
        ("grpo_continuous", lambda p: p / "missing.pt", "(FileNotFoundError)"),
    ],
)
def test_a_file_that_is_not_a_fitting_checkpoint_is_refused_in_one_line(monkeypatch, capsys, tmp_path, script, make, expected):
    args = ["--init-from", make(tmp_path), "--runs-dir", tmp_path / "runs"]
    assert_clean_error(run_cli(monkeypatch, capsys, script, *args), expected)
    assert not (tmp_path / "runs").exists()


def test_grpo_on_pixels_starts_from_ppo_on_pixels(runs_dir):
    """ppo_cnn_carracing.py -> grpo_cnn_carracing.py: the actor's trunk and head carry over, the critic stays behind."""
    quiet = [*EVAL, "--no-cuda"]
    ppo = [*TINY["ppo_cnn_carracing"], "--total-timesteps", 32, "--eval-every", 32, *quiet, "--runs-dir", runs_dir]
    assert run_script("ppo_cnn_carracing", *ppo).returncode == 0
    source = runs_dir / "CarRacing-v3__ppo_cnn_carracing__seed1"
    grpo = [*TINY["grpo_cnn_carracing"], "--total-timesteps", 40, "--eval-every", 20, *quiet, "--learning-rate", TINY_LR]
    grpo += ["--ref-update-every", 0, "--init-from", source / "checkpoints" / "latest.pt", "--runs-dir", runs_dir]
    result = run_script("grpo_cnn_carracing", *grpo)
    assert result.returncode == 0, result.stderr
    (source_metrics, source_ckpt), (metrics, ckpt) = map(
        first_eval_and_checkpoint, (source, runs_dir / "CarRacing-v3__grpo_cnn_carracing_g2__seed1")
    )
    assert metrics["eval"]["mean_return"][0] == pytest.approx(source_metrics["eval"]["mean_return"][-1], rel=1e-6)
    for name, value in ckpt["ref_agent"].items():
        assert torch.equal(value, source_ckpt["agent"][name]), name
