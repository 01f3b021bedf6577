"""--config FILE (config.py): a file and the same flags make the same run, flags win, a run's metrics.json is a config,
every bad file is one line; and benchmark.sh --grid: its runs, their names, its refusals, and plot.py --sweep on them."""

import json
import subprocess
import sys

import pytest
from test_benchmark import bench

import config
import ppo_continuous
from conftest import ROOT, assert_clean_error, read_run, run_cli, run_script

# a tiny Pendulum run (200-step episodes, no MuJoCo): the flags, and the same as a config file's values
FLAGS = ["--env-id", "Pendulum-v1", "--total-timesteps", "1024", "--num-steps", "256", "--num-minibatches", "4"]
FLAGS += ["--update-epochs", "2", "--learning-rate", "1e-3", "--hidden-sizes", "32", "32", "--no-norm-reward"]
FLAGS += ["--eval-every", "512", "--eval-episodes", "1", "--no-capture-video", "--target-kl", "None"]
VALUES = {"env_id": "Pendulum-v1", "total_timesteps": 1024, "num_steps": 256, "num_minibatches": 4, "update_epochs": 2}
VALUES |= {"learning_rate": 1e-3, "hidden_sizes": [32, 32], "norm_reward": False, "eval_every": 512, "eval_episodes": 1}
VALUES |= {"capture_video": False, "target_kl": None}
YAML = """# a tiny Pendulum run
env_id: Pendulum-v1
total_timesteps: 1024
num_steps: 256
num_minibatches: 4
update-epochs: 2          # the flag's spelling works too
learning_rate: 1e-3       # YAML reads this as text; it is checked as a number
hidden_sizes: [32, 32]
norm_reward: false
eval_every: 512
eval_episodes: 1
capture_video: false
target_kl: null
"""


def parse(argv):
    """What the training script's command line makes of `argv`, --config included (runlib.cli's first step)."""
    return config.parse_flags(ppo_continuous.Args, config.config_flags(ppo_continuous.Args, argv) + argv)


def test_yaml_toml_and_json_files_mean_the_same_flags(tmp_path):
    (tmp_path / "c.yaml").write_text(YAML)
    toml_values = {k: v for k, v in VALUES.items() if v is not None}  # TOML has no null: leave the key out
    lines = [f"{k} = {json.dumps(v)}" for k, v in toml_values.items()]
    (tmp_path / "c.toml").write_text("\n".join(lines) + "\n")
    (tmp_path / "c.json").write_text(json.dumps(VALUES))
    from_flags = parse(FLAGS)
    for name in ("c.yaml", "c.toml", "c.json"):
        assert parse(["--config", str(tmp_path / name)]) == ppo_continuous.Args(
            **{**vars(from_flags), "config": str(tmp_path / name)}
        )


def test_the_flags_given_win_over_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text(YAML)
    for argv in (
        ["--config", str(tmp_path / "c.yaml"), "--learning-rate", "0.5"],
        ["--learning-rate=0.5", f"--config={tmp_path}/c.yaml"],
    ):
        args = parse(argv)
        assert args.learning_rate == 0.5 and args.num_steps == 256  # the flag, wherever it is; the rest from the file
    assert parse(["--config", str(tmp_path / "c.yaml"), "--norm-reward", "--hidden-sizes", "8"]).norm_reward is True


def test_a_config_file_and_the_same_flags_make_identical_runs_and_metrics_json_repeats_a_run(tmp_path):
    (tmp_path / "c.yaml").write_text(YAML)
    runs = tmp_path / "runs"
    assert run_script("ppo_continuous", *FLAGS, "--exp-name", "flags", "--runs-dir", runs).returncode == 0
    result = run_script("ppo_continuous", "--config", tmp_path / "c.yaml", "--exp-name", "file", "--runs-dir", runs)
    assert result.returncode == 0, result.stderr
    (by_flags, _), (by_file, _) = read_run(runs / "Pendulum-v1__flags__seed1"), read_run(runs / "Pendulum-v1__file__seed1")
    assert by_file["eval"] == by_flags["eval"] and by_file["train"] == by_flags["train"]  # the same run, step for step
    differ = {k for k in by_flags["args"] if by_flags["args"][k] != by_file["args"][k]}
    assert differ == {"exp_name", "config"}
    assert by_file["config"] == {"path": str(tmp_path / "c.yaml"), "text": YAML} and by_flags["config"] is None

    # the run's own metrics.json as the config, another seed: everything else as the run had it
    (tmp_path / "c.yaml").unlink()  # the file is not needed again: the run recorded it
    metrics = runs / "Pendulum-v1__file__seed1" / "metrics.json"
    assert run_script("ppo_continuous", "--config", metrics, "--seed", "2").returncode == 0
    (again, _) = read_run(runs / "Pendulum-v1__file__seed2")
    assert {k for k in again["args"] if again["args"][k] != by_file["args"][k]} == {"seed", "config"}
    # ... and --resume of the run itself, from its metrics.json: complete, so nothing to do
    result = run_script("ppo_continuous", "--config", metrics, "--resume")
    assert result.returncode == 0 and "already complete" in result.stdout, result.stderr


BAD = [
    ("learning_rat: 1\n", "unknown key 'learning_rat': there is no --learning-rat: did you mean 'learning_rate'?"),
    ("learning_rate: fast\n", "key 'learning_rate' takes a number, got 'fast'"),
    ("seed: 1.5\n", "key 'seed' takes an integer, got 1.5"),
    ("norm_reward: maybe\n", "key 'norm_reward' takes true or false"),
    ("hidden_sizes: [a, b]\n", "key 'hidden_sizes' takes a list of ints"),
    ("num_steps: [1, 2]\n", "key 'num_steps' takes one value"),
    ("env_backend: docker\n", "key 'env_backend' takes one of 'gymnasium', 'envpool'"),
    ("seed: null\n", "key 'seed' takes a value (it has no None)"),
    ("- 1\n- 2\n", "holds a list, not key: value pairs"),
    ("a: [1\n", "not valid YAML"),
    ("config: other.yaml\n", "a config file cannot name another"),
]


@pytest.mark.parametrize("content, expected", BAD)
def test_a_bad_config_is_one_line_naming_the_key_and_writes_nothing(monkeypatch, capsys, tmp_path, content, expected):
    (tmp_path / "c.yaml").write_text(content)
    runs = tmp_path / "runs"
    result = run_cli(monkeypatch, capsys, "ppo_continuous", "--config", tmp_path / "c.yaml", "--runs-dir", runs)
    assert_clean_error(result, expected)
    assert result.returncode == 2 and not runs.exists()


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("missing.yaml", None, "cannot read it (FileNotFoundError)"),
        ("c.txt", "seed: 1\n", "unknown format '.txt': name it .yaml, .yml, .toml or .json"),
        ("c.json", '{"seed": ', "not valid JSON"),
        ("c.toml", "seed = = 1", "not valid TOML"),
        ("c.toml", 'learning_rate = "x"', "key 'learning_rate' takes a number"),
    ],
)
def test_an_unreadable_config_is_one_line_naming_the_fix(monkeypatch, capsys, tmp_path, name, content, expected):
    if content is not None:
        (tmp_path / name).write_text(content)
    result = run_cli(monkeypatch, capsys, "ppo_continuous", "--config", tmp_path / name, "--runs-dir", tmp_path / "runs")
    assert_clean_error(result, expected)
    assert result.returncode == 2 and not (tmp_path / "runs").exists()


def test_a_bad_config_from_a_real_shell_is_one_line_too(tmp_path):
    (tmp_path / "c.yaml").write_text("gama: 0.9\n")
    result = run_script("ppo_continuous", "--config", tmp_path / "c.yaml", "--runs-dir", tmp_path / "runs")
    assert_clean_error(result, "did you mean 'gamma'?")
    assert result.returncode == 2 and not (tmp_path / "runs").exists()
    assert_clean_error(run_script("ppo_continuous", "--config"), "--config needs a file")


# ---- benchmark.sh --grid ----


def commands(result):
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_grid_is_the_cross_product_named_by_its_values(tmp_path):
    runs = tmp_path / "runs"
    result = bench(
        "--dry-run", "--scripts", "ppo_continuous,grpo_continuous", "--envs", "Pendulum-v1", "--seeds", "1,2",
        "--group-sizes", "8", "--grid", "learning_rate=1e-4,3e-4", "--grid", "hidden_sizes=[64,64],[32]",
        "--grid", "norm_obs=true,false", "--runs-dir", runs,
    )  # fmt: skip
    lines = commands(result)
    assert len(lines) == 2 * 2 * 2 * 2 * 2  # scripts x lr x sizes x norm_obs x seeds
    names = [line.split("--exp-name ")[1].split()[0] for line in lines]
    assert len(set(names)) == 16  # each grid point once per script; the seeds share it
    first = lines[0]
    name = "ppo_continuous_learning_rate=1e-4_hidden_sizes=64x64_norm_obs=true"
    assert f"--learning-rate=1e-4 --hidden-sizes 64 64 --norm-obs --exp-name {name}" in first
    assert "grpo_continuous_g8_learning_rate=3e-4_hidden_sizes=32_norm_obs=false" in names
    assert any("--no-norm-obs" in line for line in lines)
    assert not runs.exists()  # a dry run writes nothing


def test_the_grid_and_config_pass_through_and_a_config_file_is_found_from_anywhere(tmp_path):
    (tmp_path / "c.yaml").write_text("gamma: 0.9\n")
    lines = commands(
        bench("--dry-run", "--scripts", "ppo_continuous", "--envs", "A-v0", "--seeds", "1", "--config", "c.yaml", cwd=tmp_path)
    )
    assert f"--config {tmp_path}/c.yaml --runs-dir" in lines[0] and "--exp-name" not in lines[0]


@pytest.mark.parametrize(
    "grid, expected",
    [
        ("kl_coef=0,0.01", "(ppo_continuous.py): unknown key 'kl_coef'"),  # GRPO's, not PPO's
        ("learning_rate=fast", "key 'learning_rate' takes a number, got 'fast'"),
        ("seed=1,2", "benchmark.sh sets --seed itself"),
        ("learning_rate", "write it as KEY=VALUE1,VALUE2"),
        ("learning_rate=1e-3,1e-3", "a value is empty or repeated"),
    ],
)
def test_a_bad_grid_is_refused_before_anything_starts(tmp_path, grid, expected):
    runs = tmp_path / "runs"
    result = bench("--scripts", "ppo_continuous,grpo_continuous", "--grid", grid, "--runs-dir", runs)
    assert_clean_error(result, expected)
    assert result.returncode == 2 and not runs.exists()


def test_a_grid_key_also_in_the_extra_args_is_refused(tmp_path):
    result = bench("--grid", "learning_rate=1e-3", "--runs-dir", tmp_path / "r", "--", "--learning-rate", "3e-4")
    assert_clean_error(result, "--grid learning_rate and the extra argument --learning-rate both set it")


def test_a_real_grid_runs_resumes_and_plot_py_sweeps_it(tmp_path):
    runs = tmp_path / "runs"
    tiny = ["--num-steps", "256", "--num-minibatches", "4", "--update-epochs", "1", "--eval-every", "512"]
    tiny += ["--eval-episodes", "1", "--no-capture-video"]
    args = ["--scripts", "ppo_continuous", "--envs", "Pendulum-v1", "--seeds", "1", "--total-timesteps", "1024"]
    args += ["--grid", "learning_rate=1e-4,1e-2", "--workers", "2", "--runs-dir", runs, "--skip-plots", "--", *tiny]
    first = bench(*args)
    assert first.returncode == 0 and "done 2, skipped 0" in first.stdout, first.stdout + first.stderr
    for lr in ("1e-4", "1e-2"):
        metrics, _ = read_run(runs / f"Pendulum-v1__ppo_continuous_learning_rate={lr}__seed1")
        assert metrics["completed"] and metrics["args"]["learning_rate"] == float(lr)
    assert "done 0, skipped 2" in bench(*args).stdout  # a second call resumes: nothing left to do
    plots = subprocess.run(
        [sys.executable, str(ROOT / "plot.py"), str(runs), "--sweep", "learning_rate"], capture_output=True, text=True
    )
    assert plots.returncode == 0, plots.stderr
    assert list((runs / "_plots").glob("sensitivity_learning_rate_*.png"))
