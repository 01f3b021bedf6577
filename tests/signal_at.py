"""Run a training script and send it a signal at one kind of safe point once the run has passed a step, as a cluster's
preemption or a Ctrl-C would at that moment:  python tests/signal_at.py SCRIPT POINT STEP SIGNAL [the script's flags]

POINT: rollout (an env step of the rollout), update (a minibatch step), eval (a step of an evaluation episode).
SIGNAL: TERM, INT or USR1. The signal is sent once, just before the point's safe_point() call."""

import importlib
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
script, point, step, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
module = importlib.import_module(script)
runlib = importlib.import_module("runlib")
real_safe_point = runlib.safe_point
sent = []


def safe_point():
    caller = sys._getframe(1).f_code.co_name  # runlib's update_step and run_episode, or a script's rollout
    here = {"update_step": "update", "run_episode": "eval"}.get(caller, "rollout")
    if here == point and not sent and runlib.STOP.run is not None and runlib.STOP.run.global_step >= step:
        sent.append(here)
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
    real_safe_point()


runlib.safe_point = safe_point  # the scripts call runlib.safe_point(), and runlib's own functions safe_point()
sys.argv = [f"{script}.py", *sys.argv[5:]]
module.cli(module.main, module.Args, module.ALGO)
