"""Run a training script and SIGKILL it at one point of an iteration's bookkeeping, once the run reaches a step, so
that a test can resume from exactly that state:  python tests/kill_at.py SCRIPT POINT STEP [the script's flags]

POINT: before_row (metrics.json written, not the timings.jsonl row), before_checkpoint (the row written, not
checkpoints/latest.pt), after_checkpoint (latest.pt written, not the next metrics.json), after_best (an evaluation's new
best written as best-next.pt, not yet the latest.pt that makes it best.pt)."""

import importlib
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
script, point, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
module = importlib.import_module(script)
Run = importlib.import_module("runlib").Run
real_flush, real_save = Run.flush, Run.save


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def flush(run):
    real_flush(run)
    if point == "before_row" and run.global_step >= step:
        die()


def save(run, name):
    due = name == "latest.pt" and run.global_step >= step
    if due and point == "before_checkpoint":
        die()
    real_save(run, name)
    if due and point == "after_checkpoint":
        die()
    if name == "best-next.pt" and run.global_step >= step and point == "after_best":
        die()


Run.flush, Run.save = flush, save
sys.argv = [f"{script}.py", *sys.argv[4:]]
module.cli(module.main, module.Args, module.ALGO)
