import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCRIPTS = ["ppo_continuous", "ppo_beta_continuous", "grpo_continuous", "ppo_cnn_carracing", "grpo_cnn_carracing"]


def existing_scripts():
    return [name for name in SCRIPTS if (ROOT / f"{name}.py").exists()]


def run_script(script, *args, timeout=600, **kwargs):
    """Run a training script as a user would; returns the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(ROOT / f"{script}.py"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=kwargs.get("cwd", ROOT))


@pytest.fixture
def runs_dir(tmp_path):
    return tmp_path / "runs"
