"""tune.py: a study of real runs finishes with its outputs, resumes after a kill (the cut trial's runs resume from their
checkpoints), prunes a trial that is made to be bad, and refuses bad input in one line before writing anything."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

import config
import ppo_continuous
from conftest import ROOT, assert_clean_error

# tiny Pendulum runs (no MuJoCo): 256-step rollouts, an evaluation of one episode every 256 steps
TINY = ["--env-id", "Pendulum-v1", "--num-steps", "256", "--num-minibatches", "4", "--update-epochs", "1"]
TINY += ["--eval-every", "256", "--eval-episodes", "1", "--no-capture-video", "--checkpoint-every", "256"]
SPACE = "learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}\ngae_lambda: [0.9, 0.95]\n"


def tune(study_dir, space, *args, flags=(), wait=True):
    """python tune.py for ppo_continuous.py with `args`, and TINY plus `flags` after --."""
    command = [sys.executable, str(ROOT / "tune.py"), "--script", "ppo_continuous.py", "--space", str(space)]
    command += ["--study-dir", str(study_dir), *map(str, args), "--", *TINY, *map(str, flags)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
    if not wait:  # its own process group: the test kills tune.py and its runs together, as a cluster would
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def load(study_dir):
    storage = JournalStorage(JournalFileBackend(str(study_dir / "journal.log")))
    return optuna.load_study(study_name="study", storage=storage)


def wait_for_a_checkpoint(proc, study_dir):
    """Until a run of the study (tune.py running as `proc`) is under way, with a checkpoint."""
    deadline = time.time() + 300
    while not list((study_dir / "runs").glob("*/checkpoints/latest.pt")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode() if proc.stdout else ""
        time.sleep(0.2)


def test_a_study_of_three_trials_on_two_workers_finishes_with_its_outputs(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    study_dir = tmp_path / "study"
    three = ("--n-trials", 3, "--workers", 2, "--pruner", "none")
    result = tune(study_dir, tmp_path / "space.yaml", *three, flags=["--total-timesteps", 512])
    assert result.returncode == 0, result.stdout + result.stderr
    study = load(study_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for t in study.trials:  # the value is the run's final evaluation
        metrics = json.loads((study_dir / "runs" / f"Pendulum-v1__trial{t.number:04d}__seed1" / "metrics.json").read_text())
        assert metrics["completed"] and t.value == metrics["eval"]["mean_return"][-1]
        assert metrics["args"]["learning_rate"] == t.params["learning_rate"]
    assert {"best.yaml", "trials.csv", "trials.md", "study.json", "history.png", "importance.png"} <= {
        p.name for p in study_dir.iterdir()
    }
    assert len((study_dir / "trials.csv").read_text().splitlines()) == 4

    # best.yaml is a --config file: the best trial's arguments
    best = study.best_trial
    args = config.parse_flags(
        ppo_continuous.Args, config.config_flags(ppo_continuous.Args, ["--config", str(study_dir / "best.yaml")])
    )
    assert args.learning_rate == best.params["learning_rate"] and args.gae_lambda == best.params["gae_lambda"]
    assert args.env_id == "Pendulum-v1" and args.total_timesteps == 512 and args.eval_every == 256
    assert json.loads((study_dir / "study.json").read_text())["best"]["trial"] == best.number

    again = tune(study_dir, tmp_path / "space.yaml", *three, flags=["--total-timesteps", 512])
    assert again.returncode == 0 and len(load(study_dir).trials) == 3  # done: nothing runs again


def test_a_killed_study_resumes_and_the_cut_trials_runs_resume_from_their_checkpoints(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    study_dir = tmp_path / "study"
    args = ("--n-trials", 3, "--workers", 2, "--pruner", "none")
    flags = ["--total-timesteps", 3072, "--update-epochs", 4]
    proc = tune(study_dir, tmp_path / "space.yaml", *args, flags=flags, wait=False)
    wait_for_a_checkpoint(proc, study_dir)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cut = [t for t in load(study_dir).trials if t.state == TrialState.RUNNING]
    assert cut  # the kill left trials running in the journal

    result = tune(study_dir, tmp_path / "space.yaml", *args, flags=flags)
    assert result.returncode == 0, result.stdout + result.stderr
    study = load(study_dir)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    for t in cut:
        assert study.trials[t.number].state == TrialState.FAIL
        (rerun,) = [r for r in study.trials if r.number > t.number and r.user_attrs["run"] == t.user_attrs["run"]]
        assert rerun.state == TrialState.COMPLETE and rerun.params == t.params  # the same values, in the same runs
    resumed = 0
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        run_dir = study_dir / "runs" / f"Pendulum-v1__{t.user_attrs['run']}__seed1"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        steps = metrics["eval"]["global_step"]
        assert metrics["completed"] and steps == sorted(set(steps)) and t.value == metrics["eval"]["mean_return"][-1]
        resumed += "resuming" in (run_dir / "logs" / "train.log").read_text()
    assert resumed >= 1  # a cut run went on from its checkpoint instead of starting again


@pytest.mark.parametrize("ctrl_c", [False, True])
def test_a_trial_whose_run_a_signal_stopped_runs_again_at_the_next_start_and_its_run_resumes(tmp_path, ctrl_c):
    """SIGTERM to the trial's run alone (it saves and exits 75), or Ctrl-C to tune.py and its runs together."""
    (tmp_path / "space.yaml").write_text(SPACE)
    study_dir = tmp_path / "study"
    args = ("--n-trials", 1, "--workers", 1, "--pruner", "none")
    flags = ["--total-timesteps", 3072, "--update-epochs", 4]
    proc = tune(study_dir, tmp_path / "space.yaml", *args, flags=flags, wait=False)
    wait_for_a_checkpoint(proc, study_dir)
    if ctrl_c:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        subprocess.run(["pkill", "-TERM", "-f", "--", f"--exp-name trial0000 --runs-dir {study_dir}/runs"], check=True)
    out = proc.communicate(timeout=300)[0].decode()
    assert ctrl_c or "a signal stopped seed 1's run; the next start resumes it" in out, out
    (stopped,) = load(study_dir).trials
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"]

    again = tune(study_dir, tmp_path / "space.yaml", *args, flags=flags)
    assert again.returncode == 0 and "trial 0 was stopped by a signal: it runs again" in again.stdout, again.stdout
    rerun = load(study_dir).trials[1]
    assert rerun.state == TrialState.COMPLETE and rerun.params == stopped.params and rerun.user_attrs["run"] == "trial0000"
    run_dir = study_dir / "runs" / "Pendulum-v1__trial0000__seed1"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["completed"] and metrics["eval"]["global_step"] == [256 * i for i in range(1, 13)]
    assert f"{'SIGINT' if ctrl_c else 'SIGTERM'}: stopped" in (run_dir / "logs" / "train.log").read_text()
    assert "resuming" in (run_dir / "logs" / "train.log").read_text()
    third = tune(study_dir, tmp_path / "space.yaml", *args, flags=flags)  # it ran again once: nothing more
    assert third.returncode == 0 and "stopped by a signal" not in third.stdout and len(load(study_dir).trials) == 2


def test_a_trial_made_to_be_bad_is_pruned(tmp_path):
    """Pendulum pays at most 0 per step: 200-step episodes score far below 10-step ones at every evaluation."""
    (tmp_path / "space.yaml").write_text("max_episode_steps: [10, 200]\n")
    study_dir = tmp_path / "study"
    args = ["--workers", 1, "--pruner", "median", "--startup-trials", 2]
    flags = ["--total-timesteps", 8192, "--update-epochs", 4]
    assert tune(study_dir, tmp_path / "space.yaml", "--n-trials", 0, *args, flags=flags).returncode == 0  # the study only
    study = load(study_dir)
    for steps in (10, 10, 200):
        study.enqueue_trial({"max_episode_steps": steps})
    result = tune(study_dir, tmp_path / "space.yaml", "--n-trials", 3, *args, flags=flags)
    assert result.returncode == 0, result.stdout + result.stderr
    states = [t.state for t in load(study_dir).trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    metrics = json.loads((study_dir / "runs" / "Pendulum-v1__trial0002__seed1" / "metrics.json").read_text())
    assert not metrics["completed"] and metrics["global_step"] < 8192  # stopped early, not run to the end


@pytest.mark.parametrize(
    "space, args, flags, expected",
    [
        ("gama: {low: 0.9, high: 0.99}\n", [], [], "unknown key 'gama'"),
        ("gamma: {low: 0.99, high: 0.9}\n", [], [], "a range needs a number argument and low < high"),
        ("learning_rate: {low: 0, high: 0.1, log: true}\n", [], [], "log: true, so low must be > 0"),
        ("env_backend: {low: 0, high: 1}\n", [], [], "key 'env_backend' takes one of"),
        ("gamma: {lo: 0.9}\n", [], [], "must be {low: A, high: B"),
        ("seed: [1, 2]\n", [], [], "seed is set by tune.py"),
        ("num_steps: []\n", [], [], "num_steps has no values"),
        ("gamma: [0.9, 0.99]\n", [], ["--gamma", "0.9"], "--gamma is searched"),
        ("gamma: [0.9, 0.99]\n", [], ["--eval-every", "0"], "pass --eval-every N > 0"),
        ("gamma: [0.9, 0.99]\n", [], ["--seed", "3"], "--seed is set by tune.py"),
        ("gamma: [0.9, 0.99]\n", [], ["--learning-rate", "x"], "--learning-rate"),
        ("gamma: [0.9, 0.99]\n", ["--workers", "0"], [], "--workers must be >= 1"),
        ("gamma: [0.9, 0.99]\n", ["--script", "nope.py"], [], "--script nope.py is not a training script file"),
        ("gamma: [0.9, 0.99]\n", ["--pruner", "best"], [], "--pruner"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, space, args, flags, expected):
    (tmp_path / "space.yaml").write_text(space)
    result = tune(tmp_path / "study", tmp_path / "space.yaml", *args, flags=flags)
    assert_clean_error(result, expected)
    assert result.returncode == 2 and not (tmp_path / "study").exists()


def test_a_study_dir_holding_another_study_is_refused(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    assert tune(tmp_path / "study", tmp_path / "space.yaml", "--n-trials", 0).returncode == 0
    result = tune(tmp_path / "study", tmp_path / "space.yaml", "--n-trials", 0, flags=["--gamma", "0.9"])
    assert_clean_error(result, "holds a study with other flags")
