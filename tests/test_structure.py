"""The algorithm in its script, the run in runlib.py (envs in envlib.py, --config in config.py): each script reads
top to bottom as its algorithm (CleanRL's order), nothing of the modules is pasted into a script, a script copied to
start an experiment still runs, and the Beta script is the Gaussian one with another policy."""

import ast
import os
import re
import shutil

from conftest import ROOT, TINY, existing_scripts, read_run, run_script

SCRIPTS = existing_scripts()
BUDGETS = {"ppo_continuous": 480, "ppo_beta_continuous": 480, "grpo_continuous": 480}
BUDGETS |= {"ppo_cnn_carracing": 580, "grpo_cnn_carracing": 580, "runlib": 800, "pixels": 200, "envlib": 300, "policylib": 150}
WINDOW = 6  # lines: the length of a copy that counts
# what the run module defines must never be (re)defined in a script
RUN_NAMES = {"Run", "cli", "load_checkpoint", "open_run", "atomic_write", "record_video", "run_episode", "RunningMeanStd"}
RUN_NAMES |= {"FrameSkip", "Frames", "FramesEnvPool", "EnvPoolVectorEnv", "LiveMembers", "ObsNormalizer", "RewardScaler"}
RUN_NAMES |= {"Episodes", "vector_env", "reset_seed", "value_flags", "config_flags"}


def source(name):
    return (ROOT / f"{name}.py").read_text()


def windows(text):
    """Every run of WINDOW consecutive non-blank lines (stripped), with the line number where it starts."""
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    return {tuple(s for _, s in lines[i : i + WINDOW]): lines[i][0] for i in range(len(lines) - WINDOW + 1)}


def test_each_file_keeps_its_budget():
    for name, budget in BUDGETS.items():
        if (ROOT / f"{name}.py").exists():
            assert len(source(name).splitlines()) <= budget, name


def test_each_script_is_its_algorithm_in_cleanrls_order_and_the_run_comes_from_the_module():
    for script in SCRIPTS:
        tree = ast.parse(source(script))
        names = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        order = [name for name in ("Args", "make_env", "layer_init", "Agent", "main") if name in names]
        assert names[0] == "Args" and order == sorted(order, key=names.index) and "Agent" in order, script
        assert not RUN_NAMES & set(names), script
        assert "from runlib import" in source(script), script
        assert re.search(r'^if __name__ == "__main__":\n    cli\(main, Args, ALGO\)\n\Z', source(script), re.M), script
        assert re.search(r"^def main\(args: Args\) -> None:", source(script), re.M), script


def test_no_part_of_the_shared_modules_is_pasted_into_a_script():
    module = (
        windows(source("runlib"))
        | windows(source("pixels"))
        | windows(source("envlib"))
        | windows(source("config"))
        | windows(source("policylib"))
    )
    for script in SCRIPTS:
        shared = set(windows(source(script))) & set(module)
        assert not shared, (script, [module[w] for w in shared])


def test_the_beta_script_differs_from_the_gaussian_one_in_the_policy_only():
    """Compared as code (ast: comments and formatting aside), top-level definition by definition."""

    def definitions(name):
        tree = ast.parse(source(name))
        named = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign))]
        return {getattr(node, "name", None) or ast.unparse(node.targets[0]): ast.dump(node) for node in named}

    gaussian, beta = definitions("ppo_continuous"), definitions("ppo_beta_continuous")
    differ = {name for name in gaussian.keys() | beta.keys() if gaussian.get(name) != beta.get(name)}
    assert differ == {"Agent", "env_action", "beta_dist", "BETA_EPS", "check_spaces"}


def test_a_copied_script_runs_and_names_its_runs_after_itself(runs_dir):
    """cp ppo_continuous.py my_ppo.py && python my_ppo.py: the experiment, its run directory and checkpoints are my_ppo's."""
    name = f"my_ppo_{os.getpid()}"
    copy = ROOT / f"{name}.py"
    shutil.copy(ROOT / "ppo_continuous.py", copy)
    try:
        flags = [*TINY["ppo_continuous"], "--total-timesteps", 256, "--eval-every", 0, "--runs-dir", runs_dir]
        result = run_script(name, *flags)
    finally:
        copy.unlink()
    assert result.returncode == 0, result.stderr
    metrics, _ = read_run(runs_dir / f"Hopper-v4__{name}__seed1")
    assert metrics["algo"] == name and metrics["exp_name"] == name and metrics["completed"]
