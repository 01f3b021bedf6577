"""grpo_continuous.py end to end: the run layout, an exact resume after kill -9, the NaN stop, learning. The command line
and bad input are in test_cli.py."""

import numpy as np
import pytest
import torch

import grpo_continuous as grpo
from conftest import TINY, assert_run_layout, kill_at, poison_update, read_run, run_script, tb_scalars

CHARTS = "episodic_return episodic_length SPS learning_rate group_return_mean group_return_std batch_steps"
LOSSES = "policy_loss kl_ref entropy approx_kl old_approx_kl clipfrac advantage_mean advantage_std advantage_abs_max"
TB_TAGS = [f"charts/{k}" for k in CHARTS.split()] + [f"losses/{k}" for k in LOSSES.split()]
TB_TAGS += ["eval/mean_return", "eval/std_return"]


def test_smoke_writes_the_whole_run_layout(runs_dir):
    args = ["--total-timesteps", 1000, "--eval-every", 400, "--eval-episodes", 2, "--checkpoint-every", 100]
    result = run_script("grpo_continuous", *TINY["grpo_continuous"], *args, "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    run_dir = runs_dir / "Hopper-v4__grpo_continuous_g3__seed1"  # --exp-name defaults to grpo_continuous_g{G}
    metrics, timings = read_run(run_dir)
    eval_steps = metrics["eval"]["global_step"]
    assert len(eval_steps) >= 2 and eval_steps[-1] == metrics["global_step"]
    assert_run_layout(run_dir, "grpo_continuous", eval_steps)
    assert (metrics["exp_name"], metrics["group_size"], metrics["total_timesteps"]) == ("grpo_continuous_g3", 3, 1000)
    assert 1000 <= metrics["global_step"] < 1000 + 6  # the last iteration is cut at the budget, whole lockstep rounds
    assert len(timings) > 2
    assert {"ref_agent", "obs_norm"} <= set(torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True))
    steps = tb_scalars(run_dir)
    assert set(TB_TAGS) <= set(steps), set(TB_TAGS) - set(steps)
    assert steps["charts/SPS"] == [row["global_step"] for row in timings]


RESUME_ARGS = [*TINY["grpo_continuous"], "--total-timesteps", 3000, "--eval-every", 1000, "--eval-episodes", 2]


def assert_resumed_run_is_the_whole_run(whole_dir, run_dir):
    (whole, whole_timings), (resumed, resumed_timings) = read_run(whole_dir), read_run(run_dir)
    assert resumed["completed"] and resumed["train"] == whole["train"] and resumed["eval"] == whole["eval"]
    assert [row["global_step"] for row in resumed_timings] == [row["global_step"] for row in whole_timings]
    assert tb_scalars(run_dir)["charts/SPS"] == [row["global_step"] for row in whole_timings]  # no gap, no duplicate
    for name in ("latest.pt", "best.pt"):  # best.pt: the same evaluation's policy, not one of a lost timeline
        ckpts = [torch.load(d / "checkpoints" / name, weights_only=True) for d in (whole_dir, run_dir)]
        assert ckpts[1]["global_step"] == ckpts[0]["global_step"], name
        for key in ("agent", "ref_agent"):
            for param, value in ckpts[0][key].items():
                assert torch.equal(ckpts[1][key][param], value), (name, key, param)
    assert not list(run_dir.rglob("*.tmp*")) and not (run_dir / "checkpoints" / "best-next.pt").exists()


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_resume_after_kill_9_replays_the_uninterrupted_run_exactly(runs_dir, backend):
    """Each iteration's groups start from seeds of (seed, iteration), every episode ends within its iteration, and the
    checkpoint holds torch's generator: a resumed run is the uninterrupted run, bit for bit, on either backend."""
    if backend == "envpool":
        pytest.importorskip("envpool")
    args = [*RESUME_ARGS, "--checkpoint-every", 500, "--no-capture-video", "--env-backend", backend, "--runs-dir", runs_dir]
    # killed as it is about to checkpoint: metrics, curves and timings run past latest.pt, and the resume rewinds them
    killed = kill_at("grpo_continuous", "before_checkpoint", 1200, *args, "--exp-name", "killed")
    whole_dir, run_dir = runs_dir / "Hopper-v4__whole__seed1", runs_dir / "Hopper-v4__killed__seed1"
    latest = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["global_step"]
    assert 0 < latest < killed["global_step"] < 3000
    assert run_script("grpo_continuous", *args, "--exp-name", "whole").returncode == 0
    (run_dir / "checkpoints" / "latest.pt.tmp123").write_bytes(b"half a checkpoint")  # as if killed mid-write
    result = run_script("grpo_continuous", *args, "--exp-name", "killed", "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming" in (run_dir / "logs" / "train.log").read_text()
    assert_resumed_run_is_the_whole_run(whole_dir, run_dir)


@pytest.fixture(scope="module")
def whole_dir(tmp_path_factory):
    """The uninterrupted run that the kill tests resume to (how often a run checkpoints changes nothing it computes)."""
    runs_dir = tmp_path_factory.mktemp("runs")
    args = [*RESUME_ARGS, "--no-capture-video", "--runs-dir", runs_dir, "--exp-name", "whole"]
    assert run_script("grpo_continuous", *args).returncode == 0
    return runs_dir / "Hopper-v4__whole__seed1"


# what each kill point leaves, against the step of the metrics.json it left: (the timings row written, latest.pt written)
KILL_POINTS = {
    "before_row": (False, False),
    "before_checkpoint": (True, False),
    "after_checkpoint": (True, True),
    "after_best": (True, True),  # in the next iteration, before its metrics.json: best-next.pt is a step ahead of both
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_kill_at_any_point_of_the_bookkeeping_resumes_to_the_whole_run(runs_dir, whole_dir, point):
    """kill -9 exactly between two of an iteration's writes (metrics.json, the timings row, the checkpoint, an evaluation's
    new best; see tests/kill_at.py), not wherever a poll happens to land: the resumed run is still the uninterrupted run."""
    args = [*RESUME_ARGS, "--checkpoint-every", 1, "--no-capture-video", "--runs-dir", runs_dir]
    metrics = kill_at("grpo_continuous", point, 1200, *args, "--exp-name", "killed")
    run_dir = runs_dir / "Hopper-v4__killed__seed1"
    _, timings = read_run(run_dir)
    latest = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["global_step"]
    row_written, checkpointed = KILL_POINTS[point]
    assert (timings[-1]["global_step"] == metrics["global_step"]) == row_written  # the state the kill left
    assert (latest == metrics["global_step"]) == checkpointed
    best_next = run_dir / "checkpoints" / "best-next.pt"
    assert best_next.exists() == (point == "after_best")
    if point == "after_best":
        assert torch.load(best_next, weights_only=True)["global_step"] > latest >= 1000  # of a timeline the resume drops
    assert run_script("grpo_continuous", *args, "--exp-name", "killed", "--resume").returncode == 0
    assert_resumed_run_is_the_whole_run(whole_dir, run_dir)


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(runs_dir, monkeypatch):
    """The update fills the agent's first parameter with NaN on its 3rd call: iteration 3 must not be checkpointed."""
    poison_update(monkeypatch, grpo)
    args = grpo.Args(env_id="InvertedPendulum-v4", num_groups=2, group_size=2, update_epochs=1, total_timesteps=5000)
    args.eval_every, args.checkpoint_every, args.runs_dir = 0, 1, str(runs_dir)
    with pytest.raises(FloatingPointError, match="diverged"):
        grpo.main(args)
    run_dir = runs_dir / "InvertedPendulum-v4__grpo_continuous_g2__seed1"
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["iteration"] == 2 and all(v.isfinite().all() for v in ckpt["agent"].values())
    assert read_run(run_dir)[0]["status"] == "diverged"


@pytest.mark.parametrize("adv_mode, min_train", [("episode", 220)])  # the default; step mode: test_grpo_math.py
def test_learns_inverted_pendulum(runs_dir, adv_mode, min_train):
    """A random policy balances for ~5 steps. Measured here (seed 1, 60k steps): the training return after 40k steps
    averages ~280 (`step`) and ~340 (`episode`), and both evaluate at 1000 (the limit) from ~50k steps."""
    args = ["--env-id", "InvertedPendulum-v4", "--adv-mode", adv_mode, "--total-timesteps", 60000, "--eval-every", 20000]
    result = run_script("grpo_continuous", *args, "--eval-episodes", 5, "--no-capture-video", "--runs-dir", runs_dir)
    assert result.returncode == 0, result.stderr
    metrics, _ = read_run(runs_dir / "InvertedPendulum-v4__grpo_continuous_g8__seed1")
    train = metrics["train"]
    late = [r for s, r in zip(train["global_step"], train["episodic_return"]) if s > 40000]
    assert np.mean(late) >= min_train, np.mean(late)
    assert metrics["eval"]["mean_return"][-1] >= 900
