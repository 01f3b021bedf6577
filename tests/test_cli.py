"""What every training script promises at its command line: --help documents every field, bad input
is one line with a non-zero exit and nothing written, an existing run is never overwritten."""

import importlib
import os
import re
import subprocess
import sys
from dataclasses import asdict, fields

import pytest
import torch

import runlib
from conftest import ROOT, TINY, assert_clean_error, existing_scripts, read_run, run_cli, run_script

SCRIPTS = existing_scripts()
COMMON_BAD_INPUT = [
    (["--env-id", "CartPole-v1"], "has Discrete actions; this script needs continuous (Box) ones"),
    (["--env-id", "Hoppper-v9"], "cannot make env 'Hoppper-v9'"),
    (["--total-timesteps", "0"], "--total-timesteps must be positive"),
    (["--learning-rate", "-1e-3"], "--learning-rate must be positive"),
    (["--hidden-sizes", "64", "0"], "--hidden-sizes entry must be positive"),
    (["--exp-name", "a/b"], "--exp-name must be a non-empty name"),
    (["--max-episode-steps", "0"], "--max-episode-steps must be positive"),
    (["--total-timesteps", "1e6x"], "--total-timesteps"),
    (["--no-such-flag"], "Unrecognized options: --no-such-flag"),
]
SCRIPT_BAD_INPUT = {
    "ppo_continuous": [
        (["--num-envs", "-1"], "--num-envs must be positive"),
        (["--num-minibatches", "3"], "does not divide"),
        (["--total-timesteps", "1000"], "less than one batch"),
        (["--vector-mode", "threads"], "invalid choice 'threads' for argument '--vector-mode'"),
    ],
    "grpo_continuous": [
        (["--group-size", "1"], "--group-size must be at least 2"),
        (["--num-groups", "0"], "--num-groups must be positive"),
        (["--kl-coef", "-0.1"], "--kl-coef must be >= 0"),
        (["--adv-mode", "token"], "invalid choice 'token' for argument '--adv-mode'"),
    ],
}
SCRIPT_BAD_INPUT["ppo_beta_continuous"] = SCRIPT_BAD_INPUT["ppo_continuous"]
CNN_BAD_INPUT = [
    (["--frame-stack", "0"], "--frame-stack must be positive"),
    (["--cnn-strides", "4", "2"], "one positive entry per convolution"),
    (["--resize", "16", "16"], "shrink a 16x16 frame to nothing"),
]
SCRIPT_BAD_INPUT["ppo_cnn_carracing"] = CNN_BAD_INPUT + [(["--vector-mode", "threads"], "invalid choice 'threads'")]
SCRIPT_BAD_INPUT["grpo_cnn_carracing"] = CNN_BAD_INPUT + [(["--group-size", "1"], "--group-size must be at least 2")]
# observations a script cannot take: images for the MLP scripts, flat vectors for the CNN scripts
WRONG_OBSERVATIONS = {"ppo_cnn_carracing": (["--env-id", "Hopper-v4"], "observations of shape (11,)")}
WRONG_OBSERVATIONS["grpo_cnn_carracing"] = WRONG_OBSERVATIONS["ppo_cnn_carracing"]


def bad_input(script):
    wrong_observations = WRONG_OBSERVATIONS.get(script, (["--env-id", "CarRacing-v3"], "observations of shape (96, 96, 3)"))
    return COMMON_BAD_INPUT + [wrong_observations] + SCRIPT_BAD_INPUT.get(script, [])


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_every_field(script):
    result = subprocess.run(
        [sys.executable, str(ROOT / f"{script}.py"), "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert result.returncode == 0
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.stdout).split())
    args_fields = {f.name for f in fields(importlib.import_module(script).Args)}
    for name in args_fields:
        assert f"--{name.replace('_', '-')}" in text, name
    docs = re.findall(r'^    (\w+): .*\n    """(.+?)"""', (ROOT / f"{script}.py").read_text(), re.M)
    assert {name for name, _ in docs} == args_fields  # every field has a docstring ...
    for name, doc in docs:
        assert " ".join(doc.split()[:5]) in text, name  # ... and --help shows it


@pytest.mark.parametrize(
    "script, args, expected", [(script, args, expected) for script in SCRIPTS for args, expected in bad_input(script)]
)
def test_bad_input_is_one_line_and_writes_nothing(monkeypatch, capsys, runs_dir, script, args, expected):
    assert_clean_error(run_cli(monkeypatch, capsys, script, *args, "--runs-dir", runs_dir), expected)
    assert not runs_dir.exists()


@pytest.mark.parametrize("script", ["ppo_continuous"])  # cli() is plumbing: the same text in every script
def test_bad_input_from_a_real_shell_is_one_line_too(runs_dir, script):
    assert_clean_error(
        run_script(script, "--total-timesteps", "0", "--runs-dir", runs_dir), "--total-timesteps must be positive"
    )
    assert not runs_dir.exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_existing_run_and_bad_resume_are_refused_and_nothing_is_touched(monkeypatch, capsys, runs_dir, script):
    defaults = importlib.import_module(script).Args()  # the run directory of a plain `python {script}.py`
    run_dir = runs_dir / f"{defaults.env_id}__{defaults.exp_name or f'{script}_g8'}__seed1"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"not a checkpoint")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert_clean_error(run_cli(monkeypatch, capsys, script, "--runs-dir", runs_dir), "pass --resume")
    assert_clean_error(run_cli(monkeypatch, capsys, script, "--runs-dir", runs_dir, "--resume"), "cannot read checkpoint")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    run_x = [
        *TINY[script],
        "--total-timesteps",
        256,
        "--eval-every",
        0,
        "--no-cuda",
        "--runs-dir",
        runs_dir,
        "--exp-name",
        "x",
        "--resume",
    ]
    fresh = run_script(script, *run_x)  # --resume without a checkpoint starts afresh
    assert fresh.returncode == 0 and read_run(runs_dir / f"{defaults.env_id}__x__seed1")[0]["completed"]
    other_lr = run_cli(monkeypatch, capsys, script, *run_x, "--learning-rate", "0.1")
    assert_clean_error(other_lr, "--learning-rate 0.0003 -> 0.1")


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_compares_only_what_the_run_computes(tmp_path, script):
    """A checkpoint made before a flag existed had that flag's default; how the run executes (threads, device, compile)
    may change on resume, what it computes may not."""
    module = importlib.import_module(script)
    args = module.Args(runs_dir=str(tmp_path), resume=True)
    module.check_args(args)
    latest = tmp_path / f"{args.env_id}__{args.exp_name}__seed1" / "checkpoints" / "latest.pt"
    latest.parent.mkdir(parents=True)
    saved = {k: v for k, v in asdict(args).items() if k != "env_backend"}  # as written before --env-backend existed
    torch.save({"algo": script, "format": runlib.CHECKPOINT_FORMAT, "args": saved, "metrics": {"completed": False}}, latest)
    assert runlib.open_run(args, script).ckpt["args"] == saved
    faster = module.Args(runs_dir=str(tmp_path), resume=True, torch_threads=2, compile=True)
    module.check_args(faster)
    assert runlib.open_run(faster, script).ckpt is not None
    with pytest.raises(runlib.UsageError, match="--env-backend 'gymnasium' -> 'envpool'"):
        other = module.Args(runs_dir=str(tmp_path), resume=True, env_backend="envpool")
        module.check_args(other)
        runlib.open_run(other, script)


class RunsCode:
    def __reduce__(self):
        return os.system, ("touch PWNED",)


@pytest.mark.parametrize("content", ["pickle that runs code", "older format", "another script's"])
def test_a_checkpoint_that_is_not_ours_is_refused_and_never_run(monkeypatch, capsys, tmp_path, content):
    run_dir = tmp_path / "Hopper-v4__ppo_continuous__seed1"
    (run_dir / "checkpoints").mkdir(parents=True)
    latest = run_dir / "checkpoints" / "latest.pt"
    obj = {
        "pickle that runs code": {"args": RunsCode()},
        "older format": {"args": {}, "metrics": {}},
        "another script's": {"algo": "grpo_continuous", "format": 2, "args": {}, "metrics": {}},
    }[content]
    torch.save(obj, latest)
    monkeypatch.chdir(tmp_path)
    result = run_cli(monkeypatch, capsys, "ppo_continuous", "--runs-dir", tmp_path, "--resume")
    assert_clean_error(result, "checkpoint" if content == "pickle that runs code" else "is not a checkpoint of this version")
    assert not (tmp_path / "PWNED").exists() and sorted(p.name for p in run_dir.rglob("*")) == ["checkpoints", "latest.pt"]
