"""benchmark.sh: the command list (--dry-run), bad input, a tiny real benchmark run twice (the
second run skips everything), and the same command list as an array job on a real Slurm."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, SCRIPTS

MLP_ENVS = ["Hopper-v4", "HalfCheetah-v4", "Walker2d-v4"]
# ppo_continuous.py's tiny run (ppo_beta_continuous.py takes the same flags)
TINY = [
    "--num-steps",
    "256",
    "--num-minibatches",
    "4",
    "--update-epochs",
    "1",
    "--eval-every",
    "1024",
    "--eval-episodes",
    "2",
    "--no-capture-video",
    "--no-cuda",
]
SLURM_TOOLS = ["sbatch", "squeue", "slurmctld", "slurmd", "munged", "mungekey"]
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def bench(*args, root=ROOT, cwd=None, **env):
    """bash benchmark.sh ARGS with the test's python, no BENCH_* from the caller's shell, and `env` on top."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    return subprocess.run(
        ["bash", str(root / "benchmark.sh"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd or root,
        env={**base, "BENCH_PYTHON": sys.executable, "MPLBACKEND": "Agg", **env},
    )


@pytest.fixture
def fake_repo(tmp_path):
    """A copy of benchmark.sh beside empty training scripts: returns make(script names) -> the folder."""

    def make(*scripts):
        root = tmp_path / "repo"
        root.mkdir()
        shutil.copy(ROOT / "benchmark.sh", root)
        for script in scripts:
            (root / f"{script}.py").write_text("")
        return root

    return make


def run_name(script, env, seed, group_size=None):
    return f"{env}__{script}{f'_g{group_size}' if group_size else ''}__seed{seed}"


def expected_command(root, python, script, env, seed, runs, total=None, group_size=None, extra=()):
    words = ["OMP_NUM_THREADS=1", str(python), f"{root}/{script}.py", "--env-id", env, "--seed", str(seed)]
    words += ["--total-timesteps", str(total)] if total else []
    words += ["--group-size", str(group_size)] if group_size else []
    log = f"{runs}/_benchmark/logs/{run_name(script, env, seed, group_size)}.log"
    return words + ["--runs-dir", str(runs), "--resume", *extra, ">>", log, "2>&1"]


def commands(result):
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def test_dry_run_lists_every_run_once_in_order(fake_repo, tmp_path):
    root, runs = fake_repo(*SCRIPTS), tmp_path / "runs"
    result = bench(
        "--dry-run",
        "--envs",
        "A-v0,B-v0",
        "--cnn-envs",
        "Pix-v0",
        "--seeds",
        "1 2",
        "--group-sizes",
        "4,8",
        "--total-timesteps",
        5000,
        "--runs-dir",
        runs,
        "--",
        "--foo",
        "a b",
        root=root,
    )
    expected = []
    for script in SCRIPTS:
        envs = ["Pix-v0"] if "_cnn_" in script else ["A-v0", "B-v0"]
        sizes = [4, 8] if script.startswith("grpo_") else [None]
        expected += [
            expected_command(root, sys.executable, script, env, seed, runs, 5000, g, ["--foo", "a b"])
            for env in envs
            for g in sizes
            for seed in (1, 2)
        ]
    assert len(expected) == 22 and commands(result) == expected
    assert not runs.exists()  # a dry run writes nothing


def test_a_stage_starts_from_each_seeds_checkpoint_of_an_earlier_stage(fake_repo, tmp_path):
    """{env}, {seed} and {runs} in the extra arguments become each run's; --exp-suffix names the stage's runs."""
    root, runs = fake_repo("grpo_continuous"), tmp_path / "runs"
    init = "{runs}/{env}__ppo_continuous_300k__seed{seed}/checkpoints/latest.pt"
    args = ["--dry-run", "--envs", "A-v0,B-v0", "--seeds", "1,2", "--group-sizes", "8", "--runs-dir", runs]
    result = bench(*args, "--exp-suffix", "_ft", "--", "--init-from", init, root=root)
    expected = []
    for env in ("A-v0", "B-v0"):
        for seed in (1, 2):
            command = expected_command(root, sys.executable, "grpo_continuous", env, seed, runs, group_size=8)
            at = command.index("--runs-dir")
            command[at:at] = ["--exp-name", "grpo_continuous_g8_ft"]
            command[-3:-3] = ["--init-from", f"{runs}/{env}__ppo_continuous_300k__seed{seed}/checkpoints/latest.pt"]
            command[-2] = command[-2].replace("grpo_continuous_g8__", "grpo_continuous_g8_ft__")
            expected.append(command)
    assert commands(result) == expected


def test_dry_run_defaults_environment_variables_and_slurm_options(fake_repo, tmp_path):
    root = fake_repo("ppo_continuous", "grpo_continuous")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / "bin" / "python").chmod(0o755)
    defaults = commands(bench("--dry-run", root=root, cwd=tmp_path, BENCH_PYTHON="", VIRTUAL_ENV=str(venv)))
    runs = tmp_path / "runs"  # relative to where it is started, written as an absolute path
    expected = [
        expected_command(root, venv / "bin" / "python", "ppo_continuous", env, seed, runs)
        for env in MLP_ENVS
        for seed in (1, 2, 3)
    ]
    expected += [
        expected_command(root, venv / "bin" / "python", "grpo_continuous", env, seed, runs, group_size=g)
        for env in MLP_ENVS
        for g in (4, 8, 16)
        for seed in (1, 2, 3)
    ]
    assert defaults == expected

    variables = {
        "BENCH_SCRIPTS": "grpo_continuous",
        "BENCH_ENVS": "X-v0",
        "BENCH_SEEDS": "7",
        "BENCH_GROUP_SIZES": "2",
        "BENCH_TOTAL_TIMESTEPS": "99",
        "BENCH_RUNS_DIR": str(tmp_path / "r"),
        "BENCH_EXTRA_ARGS": "--x 1",
    }
    line = expected_command(root, sys.executable, "grpo_continuous", "X-v0", 7, tmp_path / "r", 99, 2, ["--x", "1"])
    assert commands(bench("--dry-run", root=root, **variables)) == [line]
    assert commands(bench("--dry-run", "--seeds", 8, root=root, **variables))[0][6] == "8"  # a flag beats its variable

    slurm = bench(
        "--dry-run",
        "--slurm",
        "--partition",
        "gpu",
        "--time",
        "2:00:00",
        "--cpus",
        4,
        "--gpus",
        1,
        "--sbatch-args",
        "--mem=8G --qos=low",
        root=root,
    )
    assert len(commands(slurm)) == 36
    assert f"--array=1-36%{len(os.sched_getaffinity(0))} " in slurm.stderr  # default workers: nproc
    sbatch = "--cpus-per-task=4 --requeue --open-mode=append --signal=B:USR1@300 --partition=gpu --time=2:00:00"
    assert f"{sbatch} --gres=gpu:1 --mem=8G --qos=low --wrap 'exec bash " in slurm.stderr
    no_signal = bench("--dry-run", "--slurm", "--signal", 0, root=root).stderr
    assert "--requeue --open-mode=append --wrap" in no_signal and "--signal=" not in no_signal


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["--workers", "0"], {}, "--workers must be an integer >= 1, got '0'"),
        ([], {"BENCH_WORKERS": "-1"}, "--workers must be an integer >= 1, got '-1'"),
        (["--total-timesteps", "1e6"], {}, "--total-timesteps must be an integer >= 1"),
        (["--seeds", "1,x"], {}, "--seeds entry must be an integer >= 0, got 'x'"),
        (["--group-sizes", "1"], {}, "--group-sizes entry must be an integer >= 2"),
        (["--seeds", "1,2,1"], {}, "run Hopper-v4__ppo_continuous__seed1 is listed twice"),
        (["--wait"], {}, "--wait goes with --slurm"),
        (["--signal", "-5"], {}, "--signal must be an integer >= 0, got '-5'"),
        (["--scripts", "sac_continuous"], {}, "unknown script 'sac_continuous' (choose from: ppo_continuous"),
        (["--scripts", "grpo_continuous.py"], {}, "script grpo_continuous.py is not in"),
        (["--runs-dir", "{file}"], {}, "is not a directory"),
        (["--python", "/nonexistent/python"], {}, "--python /nonexistent/python is not an executable"),
        (["--fast"], {}, "unknown argument '--fast'"),
        (["--workers"], {}, "--workers needs a value"),
        (["--", "--seed", "3"], {}, "--seed is set by benchmark.sh"),
        (["--extra-args", "--exp-name=x"], {}, "--exp-name=x is set by benchmark.sh"),
        (["--skip-plots"], {"BENCH_SLURM": "yes"}, "BENCH_SLURM must be 0 or 1"),
        (["--exp-suffix", "a/b"], {}, "--exp-suffix may hold letters, digits, _ . and - only"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(fake_repo, tmp_path, args, env, expected):
    root = fake_repo("ppo_continuous")
    (tmp_path / "file").write_text("")
    args = [str(tmp_path / "file") if a == "{file}" else a for a in args]
    result = bench(*args, root=root, cwd=tmp_path, BENCH_RUNS_DIR=str(tmp_path / "runs"), **env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (
        result.stderr
    )
    assert not (tmp_path / "runs").exists() and result.stdout == ""


def test_help_documents_every_flag_and_variable():
    result = bench("--help")
    assert result.returncode == 0 and result.stderr == ""
    source = (ROOT / "benchmark.sh").read_text()
    parser = source[source.index("while (($#)); do") : source.index("\ndone\n")]  # the option parser
    parsed = set(re.findall(r"--[a-z][a-z-]+", parser))
    assert {"--dry-run", "--skip-plots", "--slurm", "--workers", "--extra-args", "--sbatch-args"} <= parsed
    for flag in parsed:
        assert re.search(rf"^  (-h, )?{flag}\b", result.stdout, re.M), flag
    for variable in set(re.findall(r"\$\{(BENCH_[A-Z_]+)", source)):
        assert f"[{variable}" in result.stdout, variable


FAKE_PYTHON = r"""#!/usr/bin/env bash
# stands in for python: seed 1 and 2 wait for each other, 3 fails, 4 is already complete, 5 is stopped by a signal
seed=$(sed -E 's/.*--seed ([0-9]+).*/\1/' <<< "$*")
touch "$MARKERS/started.$seed"
echo "OMP_NUM_THREADS=$OMP_NUM_THREADS"
case $seed in
    1|2) for _ in $(seq 300); do
             [[ -e $MARKERS/started.1 && -e $MARKERS/started.2 ]] && echo together && exit 0; sleep 0.1
         done
         echo alone ;;
    3) echo "error: broken" >&2; exit 3 ;;
    4) echo "runs/x is already complete (2,048 steps); nothing to do" ;;
    5) exit 75 ;;
esac
"""


def test_local_jobs_run_in_parallel_each_with_one_thread_and_its_log(fake_repo, tmp_path):
    root, runs = fake_repo("ppo_continuous"), tmp_path / "runs"
    (tmp_path / "python").write_text(FAKE_PYTHON)
    (tmp_path / "python").chmod(0o755)
    result = bench(
        "--envs",
        "Toy-v0",
        "--seeds",
        "1,2,3,4,5",
        "--workers",
        2,
        "--runs-dir",
        runs,
        "--skip-plots",
        root=root,
        BENCH_PYTHON=str(tmp_path / "python"),
        MARKERS=str(tmp_path),
        OMP_NUM_THREADS="4",
    )
    assert result.returncode == 1, result.stdout + result.stderr  # one run failed
    names = [run_name("ppo_continuous", "Toy-v0", seed) for seed in (1, 2, 3, 4, 5)]
    logs = [(runs / "_benchmark" / "logs" / f"{name}.log").read_text() for name in names]
    assert logs[0] == logs[1] == "OMP_NUM_THREADS=1\ntogether\n"  # two workers at once, one thread each
    assert logs[2] == "OMP_NUM_THREADS=1\nerror: broken\n"
    interrupted = "interrupted (exit 75: a signal stopped it; re-run to resume)"
    for status, name in zip(["done", "done", "failed (exit 3)", "skipped", interrupted], names):
        assert summary_line(status, name, runs) in result.stdout
    assert result.stdout.rstrip().endswith("done 2, skipped 1 (already complete), failed 2")


def real_scripts():
    """ppo_continuous plus the second PPO script where it exists (both take TINY)."""
    return [s for s in ("ppo_continuous", "ppo_beta_continuous") if (ROOT / f"{s}.py").exists()]


def read_metrics(runs, scripts, env="InvertedPendulum-v4"):
    return {(s, seed): (runs / run_name(s, env, seed) / "metrics.json").read_bytes() for s in scripts for seed in (1, 2)}


def summary_line(status, run, runs):
    return f"{status:<8} {run}  log: {runs}/_benchmark/logs/{run}.log"


def test_tiny_local_benchmark_completes_and_a_rerun_skips_everything(tmp_path):
    runs, scripts = tmp_path / "runs", real_scripts()
    common = ["--scripts", ",".join(scripts), "--seeds", "1,2", "--total-timesteps", 2048, "--workers", 2, "--runs-dir", runs]
    first = bench(*common, "--envs", "InvertedPendulum-v4,Bogus-v0", "--", *TINY)
    assert first.returncode == 1, first.stdout + first.stderr  # the bogus env's runs fail, the others go on
    n = 2 * len(scripts)
    assert f"done {n}, skipped 0 (already complete), failed {n}" in first.stdout
    for script in scripts:
        for seed in (1, 2):
            metrics = json.loads((runs / run_name(script, "InvertedPendulum-v4", seed) / "metrics.json").read_text())
            assert metrics["completed"] and metrics["global_step"] == 2048
            assert summary_line("done", run_name(script, "InvertedPendulum-v4", seed), runs) in first.stdout
            bogus = run_name(script, "Bogus-v0", seed)
            assert summary_line("failed (exit 2)", bogus, runs) in first.stdout
            assert "cannot make env 'Bogus-v0'" in (runs / "_benchmark" / "logs" / f"{bogus}.log").read_text()
    table = (runs / "_plots" / "final_performance.md").read_text()  # plot.py ran at the end
    assert all(f"| InvertedPendulum-v4 | {s} | 2,048 | 2 | 2/2 |" in table for s in scripts), table
    assert (runs / "_plots" / "curves_InvertedPendulum-v4.png").stat().st_size > 10_000

    before = read_metrics(runs, scripts)
    second = bench(*common, "--envs", "InvertedPendulum-v4", "--skip-plots", "--", *TINY)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"done 0, skipped {n} (already complete), failed 0" in second.stdout
    assert read_metrics(runs, scripts) == before


def wait_for_jobs(jobs, env, deadline_s=300):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        listed = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(jobs)], capture_output=True, text=True, env=env)
        if listed.returncode == 0 and not listed.stdout.strip():
            return
        time.sleep(0.5)
    shown = subprocess.run(["scontrol", "show", "job", ",".join(jobs)], capture_output=True, text=True, env=env).stdout
    ctld = Path(env["SLURM_CONF"]).with_name("slurmctld.log")
    tail = "".join(ctld.read_text().splitlines(keepends=True)[-40:]) if ctld.exists() else ""
    pytest.fail(f"Slurm jobs {jobs} still queued after {deadline_s} s:\n{shown}\nslurmctld.log ends:\n{tail}")


@pytest.fixture(scope="module")
def slurm():
    """A localhost Slurm (tests/slurm_local.sh) for this module's tests: the environment that reaches it."""
    if any(shutil.which(t, path=SBIN_PATH) is None for t in SLURM_TOOLS):
        pytest.skip("Slurm is not installed here (.ci/run installs Debian's slurm-wlm and munge)")
    if os.geteuid() != 0:
        pytest.skip("the localhost Slurm of tests/slurm_local.sh runs its daemons as root")
    slurm_dir = tempfile.mkdtemp(prefix="slurm", dir="/tmp")  # short: munge's socket path must fit in 108 bytes
    env = {"SLURM_CONF": f"{slurm_dir}/slurm.conf", "PATH": SBIN_PATH, "BENCH_PYTHON": ""}
    try:
        start = subprocess.run(
            ["bash", str(ROOT / "tests" / "slurm_local.sh"), "start", slurm_dir],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=120,
        )
        assert start.returncode == 0, start.stdout + start.stderr
        yield env
    finally:
        subprocess.run(
            ["bash", str(ROOT / "tests" / "slurm_local.sh"), "stop", slurm_dir], env={**os.environ, **env}, timeout=60
        )
        shutil.rmtree(slurm_dir, ignore_errors=True)


def test_slurm_array_job_runs_the_same_command_list(tmp_path, slurm):
    env = slurm
    runs, scripts = tmp_path / "runs", real_scripts()[:1]
    args = [
        "--scripts",
        scripts[0],
        "--envs",
        "InvertedPendulum-v4",
        "--seeds",
        "1,2",
        "--total-timesteps",
        2048,
        "--workers",
        2,
        "--runs-dir",
        runs,
    ]
    first = bench("--slurm", *args, "--", *TINY, **env)  # submits and returns; a dependent job plots
    print(first.stdout, first.stderr)
    assert first.returncode == 0, first.stdout + first.stderr
    jobs = re.findall(r"(?:array job|plot.py runs as job) (\d+)", first.stdout)
    assert len(jobs) == 2
    wait_for_jobs(jobs, {**os.environ, **env})
    for seed in (1, 2):
        assert json.loads((runs / run_name(scripts[0], "InvertedPendulum-v4", seed) / "metrics.json").read_text())["completed"]
    (state,) = [p for p in (runs / "_benchmark").iterdir() if p.name != "logs"]
    dry = bench("--dry-run", *args, "--", *TINY, **env)
    assert (state / "commands.txt").read_text() == dry.stdout  # the same lines as locally
    venv_python = (
        Path(os.environ["VIRTUAL_ENV"]) / "bin" / "python"
        if os.environ.get("VIRTUAL_ENV")
        else ROOT / ".venv" / "bin" / "python"
    )
    assert all(words[1] == str(venv_python) for words in commands(dry))
    assert sorted(p.name for p in state.glob("slurm-*.out")) == [f"slurm-{jobs[0]}_{i}.out" for i in (1, 2)]
    assert (runs / "_plots" / "curves_InvertedPendulum-v4.png").exists()  # by the dependent job

    again = bench("--slurm", "--wait", "--poll", 1, "--skip-plots", *args, "--", *TINY, **env)
    print(again.stdout, again.stderr)
    assert again.returncode == 0 and "done 0, skipped 2 (already complete), failed 0" in again.stdout, (
        again.stdout + again.stderr
    )


def test_a_slurm_task_signalled_before_its_time_limit_requeues_itself_and_its_run_completes(tmp_path, slurm):
    """What `--signal=B:USR1@SECONDS` does before a task's time limit, sent at once: the batch shell passes the signal to
    the run, which saves its last whole iteration and exits 75; the task requeues itself, and the run resumes to the end
    with the same steps and iterations as an uninterrupted run."""
    runs = tmp_path / "runs"
    args = ["--scripts", "ppo_continuous", "--envs", "Hopper-v4", "--seeds", 1, "--total-timesteps", 20480]
    args += ["--workers", 1, "--runs-dir", runs, "--skip-plots", "--"]
    args += ["--max-episode-steps", 50, "--eval-every", 0, "--checkpoint-every", 10**6, "--no-capture-video"]
    first = bench("--slurm", *args, **slurm)
    assert first.returncode == 0, first.stdout + first.stderr
    job = re.search(r"array job (\d+)", first.stdout)[1]
    run_dir = runs / run_name("ppo_continuous", "Hopper-v4", 1)
    env = {**os.environ, **slurm}
    deadline = time.time() + 300
    while time.time() < deadline:  # a few iterations in, checkpoint-free: only the signal's stop saves them
        timings = run_dir / "timings.jsonl"
        if timings.exists() and len(timings.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{job}_1"], env=env, check=True)
    (state,) = [p for p in (runs / "_benchmark").iterdir() if p.name != "logs"]
    # Slurm holds a requeued task for the credential lifetime (slurm_local.sh: cred_expire=10 s; 120 s by default) and
    # then starts it again by itself; starting it sooner fails it ("Job credential revoked")
    while time.time() < deadline and "requeued" not in "".join(p.read_text() for p in state.glob("slurm-*.out")):
        time.sleep(0.2)
    wait_for_jobs([job], env)
    log_file = runs / "_benchmark" / "logs" / f"{run_dir.name}.log"
    log = log_file.read_text()
    assert "SIGUSR1: stopped; latest.pt holds step" in log and "resuming" in log, log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["completed"] and metrics["global_step"] == 20480
    rows = [json.loads(line) for line in (run_dir / "timings.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == list(range(1, 11))  # 10 iterations of 2,048 steps, each once
    assert (state / "rc" / "1").read_text().strip() == "0"


@pytest.mark.parametrize(
    "run, requeued",
    [
        ("trap 'exit 75' USR1; touch started; sleep 30 & wait", True),  # it caught the signal, saved and exited 75
        ("touch started; exec sleep 30", True),  # the signal killed it before it could catch it (exit 138)
        ("trap 'exit 3' USR1; touch started; sleep 30 & wait", False),  # a failure is not requeued
    ],
)
def test_a_slurm_task_passes_usr1_to_its_run_and_requeues_what_the_signal_stopped(tmp_path, run, requeued):
    """run_line under Slurm (a fake scontrol): the batch shell passes USR1 on to the run and requeues the task when the
    signal stopped the run, and only then."""
    state, bin_dir = tmp_path / "state", tmp_path / "bin"
    (state / "rc").mkdir(parents=True)
    bin_dir.mkdir()
    (state / "commands.txt").write_text(f"cd {tmp_path} && bash -c {shlex.quote(run)}\n")
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/scontrol.args\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "41"}
    task = subprocess.Popen(["bash", str(ROOT / "benchmark.sh"), "--run-line", str(state), "1"], env=env)
    while not (tmp_path / "started").exists():
        time.sleep(0.05)
    time.sleep(0.2)  # the run is sleeping
    task.send_signal(signal.SIGUSR1)
    rc = task.wait(timeout=20)
    assert (state / "rc" / "1").read_text().strip() == str(rc)
    assert ((tmp_path / "scontrol.args").read_text().split() == ["requeue", "41"]) if requeued else rc == 3
    assert (tmp_path / "scontrol.args").exists() == requeued
