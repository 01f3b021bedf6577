"""plot.py on synthetic runs with known numbers: the table, IQM and its stratified-bootstrap CI
against slow references, the figures, and every kind of bad input."""

import csv
import itertools
import json
import os
import subprocess
import sys

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

import plot
from conftest import ROOT

FINALS = [0.0, 100.0, 200.0, 1000.0]  # final eval returns of algo_a's 4 seeds: mean 325, IQM 150


def write_run(
    runs_dir,
    env,
    exp,
    seed,
    eval_returns=(),
    train_returns=(),
    step=1000,
    group_size=None,
    status="completed",
    sps=1000.0,
    timings=True,
    policy_forward_s=1.0,
    args=None,
    iteration_s=10.0,
    total_timesteps=1000,
    init_from=None,
):
    """A run directory as the training scripts write it; evals and episodes evenly spaced up to `step`; two iterations
    of `iteration_s` seconds each, at step / 2 and step; `init_from`: metrics.json's, for a fine-tuned run."""
    run_dir = runs_dir / f"{env}__{exp}__seed{seed}"
    run_dir.mkdir(parents=True)
    eval_steps = [round(step * (i + 1) / len(eval_returns)) for i in range(len(eval_returns))]
    train_steps = [round(step * (i + 1) / len(train_returns)) for i in range(len(train_returns))]
    metrics = {
        "env_id": env,
        "algo": exp.split("_g")[0],
        "exp_name": exp,
        "seed": seed,
        "group_size": group_size,
        "args": args or {},
        "status": status,
        "completed": status == "completed",
        "global_step": step,
        "total_timesteps": total_timesteps,
        "sps": sps,
        "wall_time_s": 1.0,
        "best_eval_return": None,
        "train": {
            "global_step": train_steps,
            "episodic_return": list(train_returns),
            "episodic_length": [1] * len(train_returns),
        },
        "eval": {"global_step": eval_steps, "mean_return": list(eval_returns), "std_return": [0.0] * len(eval_returns)},
        "init_from": init_from,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if timings:  # each part of an iteration in tenths of iteration_s (policy forward: policy_forward_s tenths)
        parts = {"rollout_s": 4, "env_step_s": 2, "update_s": 3, "eval_s": 2, "io_s": 1, "time_s": 10}
        if policy_forward_s is not None:  # None: a run older than it
            parts["policy_forward_s"] = policy_forward_s
        row = {"iteration": 1, "global_step": step // 2, "sps": sps} | {k: v * iteration_s / 10 for k, v in parts.items()}
        second = {**row, "iteration": 2, "global_step": step}
        (run_dir / "timings.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(second) + "\n")
    return run_dir


@pytest.fixture
def synthetic(runs_dir):
    """Toy-v0: algo_a (4 seeds, known finals), algo_b (1 seed, still running, no policy forward times), GRPO at G=4 and 8;
    Other-v0: algo_a without any evaluation."""
    for seed, final in enumerate(FINALS, 1):
        write_run(
            runs_dir,
            "Toy-v0",
            "algo_a",
            seed,
            eval_returns=[final / 2, final],
            train_returns=[0.0] * 9 + [final],
            sps=1000.0 * seed,
        )
    old = {"step": 500, "status": "running", "policy_forward_s": None}  # still running, written before policy forward times
    write_run(runs_dir, "Toy-v0", "algo_b", 1, eval_returns=[50.0], train_returns=[5.0, 7.0], **old)
    for g, seed in itertools.product((4, 8), (1, 2, 3)):
        write_run(
            runs_dir, "Toy-v0", f"grpo_g{g}", seed, eval_returns=[g, g * 10.0 + seed], train_returns=[1.0, 2.0], group_size=g
        )
    write_run(runs_dir, "Other-v0", "algo_a", 1, train_returns=[3.0, 4.0], timings=False)
    return runs_dir


def run_plot(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "plot.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "MPLBACKEND": "Agg"},
        timeout=300,
    )


def read_csv(path):
    return {(row["env"], row["algorithm"]): row for row in csv.DictReader(path.open())}


def slow_iqm(values):
    values = sorted(values)
    cut = int(len(values) / 4)  # scipy.stats.trim_mean(values, 0.25) drops this many at each end
    middle = values[cut : len(values) - cut]
    return sum(middle) / len(middle)


def exact_bootstrap_ci(strata, confidence=0.95):
    """The percentile CI of the IQM over every equally likely stratified resample, enumerated."""
    stats = [
        slow_iqm([x for part in resample for x in part])
        for resample in itertools.product(*[itertools.product(s, repeat=len(s)) for s in strata])
    ]
    tail = 100 * (1 - confidence) / 2
    return np.percentile(stats, [tail, 100 - tail])


def test_table_numbers_and_files(synthetic):
    result = run_plot(synthetic)
    assert result.returncode == 0, result.stderr
    out = synthetic / "_plots"
    assert sorted(p.name for p in out.iterdir()) == [
        "curves_Other-v0.png",
        "curves_Toy-v0.png",
        "curves_all_envs.png",
        "final_performance.csv",
        "final_performance.md",
        "group_size_Toy-v0.png",
        "time_breakdown.png",
    ]
    rows = read_csv(out / "final_performance.csv")
    a = rows[("Toy-v0", "algo_a")]
    assert (int(a["seeds"]), int(a["completed"]), int(a["steps"])) == (4, 4, 1000)
    assert float(a["final_mean"]) == pytest.approx(325.0) and float(a["final_std"]) == pytest.approx(np.std(FINALS))
    assert float(a["iqm"]) == pytest.approx(150.0) and float(a["sps"]) == pytest.approx(2500.0)
    low, high = exact_bootstrap_ci([FINALS])
    assert float(a["iqm_ci_low"]) == pytest.approx(low, abs=0.05 * (high - low))
    assert float(a["iqm_ci_high"]) == pytest.approx(high, abs=0.05 * (high - low))
    b = rows[("Toy-v0", "algo_b")]  # one seed, in progress: its latest evaluation, a zero-width CI
    assert (int(b["seeds"]), int(b["completed"]), float(b["final_mean"]), float(b["final_std"])) == (1, 0, 50.0, 0.0)
    assert float(b["iqm_ci_low"]) == float(b["iqm_ci_high"]) == 50.0
    assert float(rows[("Toy-v0", "grpo_g8")]["final_mean"]) == pytest.approx(82.0)
    other = rows[("Other-v0", "algo_a")]  # no evaluation: listed, without numbers
    assert other["seeds"] == "0" and other["final_mean"] == other["iqm"] == ""
    markdown = (out / "final_performance.md").read_text()
    assert markdown in result.stdout  # printed and saved
    assert (
        f"| Toy-v0 | algo_a | 1,000 | 4 | 4/4 | 325.0 ± {np.std(FINALS):.1f} | 150.0 [{float(a['iqm_ci_low']):.1f}, "
        in markdown
    )
    assert "| Toy-v0 | algo_b | 1,000 | 1 | 0/1 | 50.0 ± 0.0 | 50.0 [50.0, 50.0] |" in markdown
    assert "| Other-v0 | algo_a | 1,000 | 0 | 1/1 | – | – |" in markdown
    assert not list(out.glob(".tmp*"))  # atomic writes leave no temp files


def test_total_steps_and_train_metric(synthetic, tmp_path):
    result = run_plot(synthetic, "--output-dir", tmp_path / "half", "--total-steps", 500)
    assert result.returncode == 0, result.stderr
    a = read_csv(tmp_path / "half" / "final_performance.csv")[("Toy-v0", "algo_a")]
    assert float(a["final_mean"]) == pytest.approx(325.0 / 2) and a["steps"] == "500"  # the evaluation at step 500
    assert not (synthetic / "_plots").exists()

    result = run_plot(synthetic, "--output-dir", tmp_path / "train", "--metric", "train")
    assert result.returncode == 0, result.stderr
    rows = read_csv(tmp_path / "train" / "final_performance.csv")
    # the last 10% of the steps hold each seed's last episode only
    assert float(rows[("Toy-v0", "algo_a")]["final_mean"]) == pytest.approx(325.0)
    assert float(rows[("Other-v0", "algo_a")]["final_mean"]) == pytest.approx(4.0)
    assert "training return over the last 10% of steps" in (tmp_path / "train" / "final_performance.md").read_text()


def test_reference_figures_get_a_column_and_a_line_and_every_env_is_in_one_figure(synthetic, tmp_path):
    reference = tmp_path / "reference.csv"
    reference.write_text("env,metric,name,mean,std\nToy-v0,eval,Lib (published),123,4\nOther-v0,train,Lib (published),7,\n")
    for metric, toy, other in (("eval", "123 ± 4", "–"), ("train", "–", "7")):
        out = tmp_path / metric
        result = run_plot(synthetic, "--reference", reference, "--metric", metric, "--output-dir", out)
        assert result.returncode == 0, result.stderr
        lines = (out / "final_performance.md").read_text().splitlines()
        assert lines[2].endswith("| SPS | Lib (published) |") and lines[3].endswith("---:|" * 6)
        assert all(line.endswith(f"| {toy} |") for line in lines if line.startswith("| Toy-v0 "))
        assert all(line.endswith(f"| {other} |") for line in lines if line.startswith("| Other-v0 "))
        row = read_csv(out / "final_performance.csv")[("Toy-v0", "algo_a")]
        assert row["Lib (published) mean"] == ("123.0" if metric == "eval" else "")
        grid = matplotlib.image.imread(out / "curves_all_envs.png")[..., :3]  # Toy-v0 and Other-v0 side by side
        assert grid.shape[1] > 1.8 * grid.shape[0] and len(np.unique(grid.reshape(-1, 3), axis=0)) > 200
        dashed = np.array(matplotlib.colormaps["Dark2"](0)[:3])  # the reference's line
        assert (np.abs(grid - dashed).max(axis=-1) < 0.05).sum() > 100


def test_runs_that_differ_in_an_argument_stay_apart_and_a_sweep_shows_each_value(runs_dir):
    """GRPO at G = 4, 8 with --adv-mode episode and step under one exp_name each (two folders), and PPO at three
    learning rates: the table, the group-size figure and --sweep keep every config apart."""
    for mode, offset in (("episode", 0.0), ("step", 100.0)):
        for g, seed in itertools.product((4, 8), (1, 2, 3)):
            args = {"group_size": g, "adv_mode": mode, "learning_rate": 3e-4, "seed": seed, "cuda": seed == 2}
            args |= {"adv_norm": "group"} if seed < 3 else {}  # seed 3 as a run older than --adv-norm
            write_run(runs_dir / mode, "Toy-v0", f"grpo_g{g}", seed, eval_returns=[offset + g + seed], group_size=g, args=args)
    for lr, seed in itertools.product((1e-4, 3e-4, 1e-3), (1, 2)):
        args = {"learning_rate": lr, "config": None if seed == 1 else "c.yaml"}  # flags, or the same from a config file
        write_run(runs_dir / str(lr), "Toy-v0", "ppo", seed, eval_returns=[round(lr * 1e4) + seed], args=args)
    result = run_plot(runs_dir, "--sweep", "learning-rate")
    assert result.returncode == 0, result.stderr
    rows = read_csv(runs_dir / "_plots" / "final_performance.csv")
    assert float(rows[("Toy-v0", "grpo_g8 (adv_mode=step)")]["final_mean"]) == pytest.approx(110.0)  # 100 + 8 + seed 2
    assert float(rows[("Toy-v0", "grpo_g8 (adv_mode=episode)")]["final_mean"]) == pytest.approx(10.0)
    assert float(rows[("Toy-v0", "ppo (learning_rate=0.001)")]["final_mean"]) == pytest.approx(11.5)
    assert (
        len(rows) == 7
    )  # 2 x 2 GRPO configs, 3 learning rates; `cuda`, `config` (how a run ran), a missing argument: no split

    runs = plot.load_runs(runs_dir)
    grpo = [r for r in runs if r.algo == "grpo"]
    assert plot.sweep_points(grpo, "group_size", "eval", 1000) == {
        "grpo (adv_mode=episode)": [(4, [5.0, 6.0, 7.0]), (8, [9.0, 10.0, 11.0])],
        "grpo (adv_mode=step)": [(4, [105.0, 106.0, 107.0]), (8, [109.0, 110.0, 111.0])],
    }
    assert plot.sweep_points(runs, "learning_rate", "eval", 1000)["ppo"] == [
        (1e-4, [2.0, 3.0]),
        (3e-4, [4.0, 5.0]),
        (1e-3, [11.0, 12.0]),
    ]
    for name in ("group_size_Toy-v0.png", "sensitivity_learning_rate_Toy-v0.png"):
        image = matplotlib.image.imread(runs_dir / "_plots" / name)[..., :3]
        assert image.std() > 0.05 and len(np.unique(image.reshape(-1, 3), axis=0)) > 200, name
    assert_one_line_error(run_plot(runs_dir, "--sweep", "learning_rat"), "--sweep learning_rat: no run has that argument")


def test_a_sweep_around_a_base_config_labels_only_what_differs_from_the_base(runs_dir):
    for name, args in (
        ("base", {"kl_coef": 0.01, "lr": 1}),
        ("nokl", {"kl_coef": 0.0, "lr": 1}),
        ("lr2", {"kl_coef": 0.01, "lr": 2}),
    ):
        write_run(runs_dir / name, "Toy-v0", "x", 1, eval_returns=[1.0], args=args)
    assert sorted(r.exp for r in plot.load_runs(runs_dir)) == ["x", "x (kl_coef=0.0)", "x (lr=2)"]


@pytest.mark.parametrize("n", range(1, 13))
def test_iqm_matches_a_slow_reference(n):
    values = np.random.default_rng(n).normal(size=n) * 100
    assert plot.iqm(values) == pytest.approx(slow_iqm(list(values)))


def test_stratified_bootstrap_ci_matches_the_exact_bootstrap():
    strata = [[1.0, 4.0, 9.0], [20.0, 31.0, 47.0, 60.0]]  # two tasks on different scales
    for confidence in (0.95, 0.8):
        low, high = exact_bootstrap_ci(strata, confidence)
        ci = plot.stratified_bootstrap_ci(strata, confidence=confidence)
        assert ci == pytest.approx((low, high), abs=0.05 * (high - low))
    pooled_low, pooled_high = exact_bootstrap_ci([strata[0] + strata[1]])  # what resampling across tasks gives
    assert pooled_high - pooled_low > 1.5 * (high - low)


def test_smoothing_and_the_common_grid():
    steps, values = np.array([10.0, 20.0, 30.0, 40.0]), np.array([1.0, 3.0, 5.0, 7.0])
    slow = [np.mean([v for s2, v in zip(steps, values) if s - 25 < s2 <= s]) for s in steps]
    assert plot.smooth(steps, values, 25) == pytest.approx(slow)
    grid = np.array([0.0, 15.0, 40.0, 50.0])
    curve = plot.on_grid(steps, values, grid)
    assert np.isnan(curve[[0, 3]]).all() and curve[1:3] == pytest.approx([2.0, 7.0])
    short = plot.on_grid(steps[:2], values[:2], grid)  # a run that ended early: the mean stops with it
    mean, std, low, high = plot.seed_bands(np.array([curve, short]))
    assert mean[1] == pytest.approx(2.0) and np.isnan(mean[2]) and high[1] == low[1] == 2.0 and std[1] == 0


def test_figures_are_real_images(synthetic):
    assert run_plot(synthetic).returncode == 0
    out = synthetic / "_plots"
    tab10 = [np.array(matplotlib.colors.to_rgb(c)) for c in ("#1f77b4", "#ff7f0e", "#2ca02c")]
    for name in ("curves_Toy-v0.png", "group_size_Toy-v0.png", "time_breakdown.png"):
        image = matplotlib.image.imread(out / name)[..., :3]
        assert image.shape[0] >= 300 and image.shape[1] >= 1000 and image.std() > 0.05, name
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 200, name  # lines, bands and text, not a blank canvas
    curves = matplotlib.image.imread(out / "curves_Toy-v0.png")[..., :3]
    for color in tab10:  # a line in each of the first three algorithms' colors
        assert (np.abs(curves - color).max(axis=-1) < 0.02).sum() > 100, color
    for alpha in (0.08, 1 - 0.92 * 0.75):  # algo_a's min-max band alone, and under its std band
        assert (np.abs(curves - (1 - alpha + alpha * tab10[0])).max(axis=-1) < 0.01).sum() > 1000, alpha
    breakdown = matplotlib.image.imread(out / "time_breakdown.png")[..., :3]
    for _, _, color in plot.TIME_PARTS:  # every part of the iteration has its segment
        assert (np.abs(breakdown - matplotlib.colors.to_rgb(color)).max(axis=-1) < 0.02).sum() > 500, color


def test_time_breakdown_splits_the_rollout_into_env_step_policy_forward_and_rest(runs_dir):
    breakdown = plot.time_breakdown(plot.read_timings(write_run(runs_dir, "Toy-v0", "algo_a", 1)))  # 2 iterations
    parts = {key: breakdown[key] for key, _, _ in plot.TIME_PARTS}
    assert parts == {"env_step_s": 4, "policy_forward_s": 2, "rest_s": 2, "update_s": 6, "eval_s": 4, "io_s": 2}
    assert sum(parts.values()) == breakdown["time_s"] == 20


def test_runs_without_policy_forward_times_have_no_policy_segment(runs_dir):
    old = plot.read_timings(write_run(runs_dir, "Toy-v0", "algo_a", 1, policy_forward_s=None))
    new = plot.read_timings(write_run(runs_dir, "Toy-v0", "algo_b", 1))
    breakdown = plot.time_breakdown(old)
    assert breakdown["policy_forward_s"] is None and breakdown["rest_s"] == 4  # unknown, not 0: it is in the rest
    assert plot.time_breakdown(old + new)["policy_forward_s"] is None  # resumed by newer code: still not all timed
    ax = plot.figure_time_breakdown(plot.load_runs(runs_dir)).axes[0]
    policy = next(bars for bars in ax.containers if bars.get_label() == "policy forward")
    assert [bar.get_width() for bar in policy] == [10, 0]  # bottom to top: algo_b, algo_a
    notes = [t.get_text() for t in ax.texts if "SPS" in t.get_text()]
    assert ["not timed" in note for note in notes] == [False, True] and all("rollout 40%" in n for n in notes)


def test_corrupt_and_partial_runs_are_skipped_with_a_warning(runs_dir):
    good = write_run(runs_dir, "Toy-v0", "algo_a", 1, eval_returns=[1.0, 2.0], train_returns=[1.0])
    (good / "timings.jsonl").write_text('{"iteration": 1, "time_s": 1, "rollout_s"\n')  # cut by kill -9
    bad = {
        "empty": "",
        "truncated": '{"env_id": "Toy-v0", "exp',
        "a list": "[1, 2]",
        "no seed": json.dumps({"env_id": "Toy-v0", "exp_name": "x", "train": {}, "eval": {}}),
        "lengths": json.loads((good / "metrics.json").read_text()) | {"eval": {"global_step": [1, 2], "mean_return": [1.0]}},
    }
    for name, content in bad.items():
        (runs_dir / name).mkdir()
        (runs_dir / name / "metrics.json").write_text(content if isinstance(content, str) else json.dumps(content))
    fresh = write_run(runs_dir, "Toy-v0", "algo_a", 2, step=0, status="running", timings=False)  # nothing recorded yet
    result = run_plot(runs_dir)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: skipping")]
    assert sorted(line.split(runs_dir.name + "/")[1].split("/")[0] for line in warnings) == sorted(bad)
    assert "Traceback" not in result.stderr and fresh.exists()
    row = read_csv(runs_dir / "_plots" / "final_performance.csv")[("Toy-v0", "algo_a")]
    assert (row["seeds"], row["completed"], float(row["final_mean"])) == ("1", "1", 2.0)
    assert not (runs_dir / "_plots" / "time_breakdown.png").exists()  # no readable timings: no chart, no crash


def test_ratio_to_gives_each_row_its_percentage_of_an_algorithm_on_the_same_env(synthetic, tmp_path):
    result = run_plot(synthetic, "--ratio-to", "algo_a", "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "final_performance.md").read_text().splitlines()
    assert lines[2].endswith("| SPS | % of algo_a |") and lines[3].endswith("---:|" * 7)
    rows = {line.split(" | ")[1]: line for line in lines if line.startswith("| Toy-v0 ")}
    assert rows["algo_a"].endswith("| 100% |") and rows["grpo_g4"].endswith("| 13% |")  # 42 / 325 (FINALS' mean)
    assert rows["algo_b"].endswith("| 15% |")  # 50 / 325
    assert all(line.endswith("| – |") for line in lines if line.startswith("| Other-v0 "))  # no algo_a evaluation there
    assert float(read_csv(tmp_path / "final_performance.csv")[("Toy-v0", "grpo_g8")]["ratio_to_algo_a"]) == 82 / 325
    assert_one_line_error(run_plot(synthetic, "--ratio-to", "algo_c"), "--ratio-to algo_c: no runs of that algorithm")


def test_x_time_puts_runs_at_their_elapsed_seconds(runs_dir, tmp_path, capsys):
    """Two runs with the same steps, one twice as slow (two iterations of 300 s, or of 600 s): against time the fast
    one ends at half the slow one's seconds, and a time budget reads each run's last evaluation at or before it."""
    write_run(runs_dir, "Toy-v0", "fast", 1, eval_returns=[1.0, 2.0], iteration_s=300.0)  # evaluations at 500, 1000
    write_run(runs_dir, "Toy-v0", "slow", 1, eval_returns=[10.0, 20.0], iteration_s=600.0)
    write_run(runs_dir, "Toy-v0", "untimed", 1, eval_returns=[5.0], timings=False)
    runs = {r.exp: r for r in plot.place_runs(plot.load_runs(runs_dir), "time")}
    assert sorted(runs) == ["fast", "slow"] and "untimed__seed1 for --x time" in capsys.readouterr().err
    assert runs["fast"].series["eval"][0].tolist() == [300, 600] and runs["fast"].global_step == 600
    assert runs["slow"].series["eval"][0].tolist() == [600, 1200] and runs["slow"].global_step == 1200

    plot.main([str(runs_dir), "--x", "time"])
    out = runs_dir / "_plots"
    assert sorted(p.name for p in out.iterdir()) == [
        "curves_Toy-v0_time.png",
        "final_performance_time.csv",
        "final_performance_time.md",
    ]
    rows = read_csv(out / "final_performance_time.csv")
    assert [(rows[("Toy-v0", e)]["seconds"], rows[("Toy-v0", e)]["final_mean"]) for e in ("fast", "slow")] == [
        ("1200.0", "2.0"),
        ("1200.0", "20.0"),
    ]
    plot.main([str(runs_dir), "--x", "time", "--total-time", "900", "--output-dir", str(tmp_path / "900")])
    markdown = (tmp_path / "900" / "final_performance_time.md").read_text()
    assert "at or before `seconds` of wall-clock time" in markdown and "| env | algorithm | seconds |" in markdown
    assert (
        "| Toy-v0 | fast | 900 | 1 | 1/1 | 2.0 ± 0.0 |" in markdown
        and "| Toy-v0 | slow | 900 | 1 | 1/1 | 10.0 ± 0.0 |" in markdown
    )

    fig = plot.figure_learning_curves("Toy-v0", list(runs.values()), 1200, 24, {"fast": "C0", "slow": "C1"}, x="time")
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert ax.get_xlabel() == "wall-clock time" and "10 min" in labels and all(label.endswith(" min") for label in labels)
    assert "trailing mean over 24 s" in fig.axes[1].get_title()
    write_run(tmp_path / "untimed", "Toy-v0", "untimed", 1, eval_returns=[5.0], timings=False)
    with pytest.raises(plot.UsageError, match="has a timings.jsonl with steps"):
        plot.main([str(tmp_path / "untimed"), "--x", "time"])
    assert not (tmp_path / "untimed" / "_plots").exists()


def write_pipeline(runs_dir, ppo_step=500):
    """PPO from scratch (seeds 1, 2; 1000 steps, evaluations at 250, 500, 750, 1000: 10, 20, 30, 40 + seed), GRPO G=8 from
    scratch, and GRPO G=8 fine-tuned from each PPO seed's checkpoint at ppo_step, at two learning rates (500 of 600
    steps so far, evaluations at 250, 500 of its own steps: 100, 200 + seed, 300 more at the other rate)."""
    for seed in (1, 2):
        ppo = write_run(runs_dir, "Toy-v0", "ppo", seed, eval_returns=[10.0 * k + seed for k in (1, 2, 3, 4)])
        write_run(runs_dir, "Toy-v0", "grpo_g8", seed, eval_returns=[1.0, 2.0], group_size=8)
        init_from = {"run": ppo.name, "algo": "ppo", "exp_name": "ppo", "seed": seed, "global_step": ppo_step}
        init_from |= {"path": str(ppo / "checkpoints" / "latest.pt"), "wall_time_s": 7.0, "eval_return": 20.0 + seed}
        for folder, lr, more in (("ft", 1e-3, 0.0), ("ft_lr", 3e-4, 300.0)):
            args = {"group_size": 8, "learning_rate": lr, "init_from": init_from["path"], "freeze_init_norm": True}
            evals = [100.0 + more + seed, 200.0 + more + seed]
            kwargs = dict(step=500, total_timesteps=600, status="running", init_from=init_from)
            write_run(runs_dir / folder, "Toy-v0", "grpo_g8", seed, eval_returns=evals, group_size=8, args=args, **kwargs)
    older = json.loads((runs_dir / "Toy-v0__ppo__seed2" / "metrics.json").read_text())
    del older["init_from"]  # a run older than --init-from: from scratch too
    (runs_dir / "Toy-v0__ppo__seed2" / "metrics.json").write_text(json.dumps(older))


def test_fine_tuned_runs_are_their_own_algorithm_after_their_source_steps(runs_dir, capsys):
    write_pipeline(runs_dir)
    fast, slow = "grpo_g8 ← ppo 500 (learning_rate=0.001)", "grpo_g8 ← ppo 500 (learning_rate=0.0003)"
    plot.main([str(runs_dir), "--ratio-to", fast.replace("←", "<-")])
    rows = read_csv(runs_dir / "_plots" / "final_performance.csv")
    assert sorted(algo for _, algo in rows) == sorted(["grpo_g8", "ppo", slow, fast])  # no split by checkpoint path
    # the budget: 500 steps of PPO + 600 of fine-tuning; the fine-tuned runs' evaluations at 750 and 1000
    assert {row["steps"] for row in rows.values()} == {"1100"}
    finals = [float(rows[("Toy-v0", algo)]["final_mean"]) for algo in ("ppo", "grpo_g8", fast, slow)]
    assert finals == [41.5, 2.0, 201.5, 501.5]
    assert float(rows[("Toy-v0", "ppo")][f"ratio_to_{fast}"]) == pytest.approx(41.5 / 201.5)
    assert f"| Toy-v0 | {fast} | 1,100 | 2 | 0/2 | 201.5 ± 0.5 |" in capsys.readouterr().out
    runs = plot.place_runs(plot.load_runs(runs_dir), "steps")
    tuned = next(r for r in runs if r.exp == fast and r.seed == 1)
    assert tuned.series["eval"][0].tolist() == [750, 1000] and (tuned.global_step, tuned.total_timesteps) == (1000, 1100)
    families = plot.sweep_points([r for r in runs if r.group_size], "group_size", "eval", 1100)  # apart in group_size_*.png
    assert families == {
        "grpo": [(8, [2.0, 2.0])],
        "grpo ← ppo 500 (learning_rate=0.001)": [(8, [201.0, 202.0])],
        "grpo ← ppo 500 (learning_rate=0.0003)": [(8, [501.0, 502.0])],
    }
    assert plot.short_steps(299008, 3) == "299k" and plot.short_steps(1.5e6, 3) == "1.5M"


def test_a_fine_tuned_run_s_curve_starts_with_its_source_s(runs_dir):
    write_pipeline(runs_dir)
    source = runs_dir / "Toy-v0__ppo__seed1"
    init_from = json.loads((runs_dir / "ft" / "Toy-v0__grpo_g8__seed1" / "metrics.json").read_text())["init_from"]
    write_run(runs_dir / "no_eval_yet", "Toy-v0", "grpo_g4", 1, step=500, group_size=4, init_from=init_from)
    runs = {(r.exp, r.seed): r for r in plot.place_runs(plot.load_runs(runs_dir), "steps")}
    tuned = runs[("grpo_g8 ← ppo 500 (learning_rate=0.001)", 1)]
    # PPO seed 1's evaluations up to step 500, then the fine-tuned run's own, 500 steps later
    assert [a.tolist() for a in plot.curve(tuned, "eval")] == [[250, 500, 750, 1000], [11.0, 21.0, 101.0, 201.0]]
    assert runs[("ppo", 1)].prefix == {} and runs[("grpo_g8", 1)].prefix == {}
    rows = plot.final_table(list(runs.values()), "eval", {"Toy-v0": 1100})
    assert next(row for row in rows if row["algorithm"] == "grpo_g4 ← ppo 500")["seeds"] == 0  # the prefix is not its own

    timed = {(r.exp, r.seed): r for r in plot.place_runs(plot.load_runs(runs_dir), "time")}
    # PPO: 10 s to step 500 (its evaluations at 5 s, 10 s); the fine-tuned run 7 s (init_from.wall_time_s) + its own
    assert plot.curve(timed[("grpo_g8 ← ppo 500 (learning_rate=0.001)", 1)], "eval")[0].tolist() == [5, 10, 17, 27]
    (source / "metrics.json").rename(source / "moved.json")  # the source not among the runs: no prefix
    alone = next(r for r in plot.place_runs(plot.load_runs(runs_dir), "steps") if r.exp == tuned.exp and r.seed == 1)
    assert alone.prefix == {} and alone.series["eval"][0].tolist() == [750, 1000]


def test_several_runs_dirs_are_read_together_and_exp_env_keep_some_runs(tmp_path, monkeypatch, capsys):
    """PPO (the sources) in a/, the runs fine-tuned from it in b/ (b/ft, b/ft_lr), with an Other-v0 run and a shorter
    copy of PPO seed 1: read together, fine-tuned curves start with PPO's, --exp and --env keep a subset."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_pipeline(a)
    b.mkdir()
    for folder in ("ft", "ft_lr"):
        (a / folder).rename(b / folder)
    write_run(b, "Other-v0", "ppo", 1, eval_returns=[5.0])
    write_run(b / "copy", "Toy-v0", "ppo", 1, eval_returns=[0.0], step=500)
    fast, slow = "grpo_g8 ← ppo 500 (learning_rate=0.001)", "grpo_g8 ← ppo 500 (learning_rate=0.0003)"
    plotted = []  # the runs each main() draws curves of
    draw = plot.figure_learning_curves
    monkeypatch.setattr(plot, "figure_learning_curves", lambda env, runs, *a: plotted.extend(runs) or draw(env, runs, *a))

    def tables(*args):
        plotted.clear()
        plot.main([str(a), str(b), *args])
        return read_csv(a / "_plots" / "final_performance.csv")  # the first RUNS_DIR's

    def drawn_curve():  # of the fine-tuned run at learning rate 1e-3, seed 1: PPO seed 1's points up to 500 first
        tuned = next(r for r in plotted if r.exp == fast and r.seed == 1)
        return [xs.tolist() for xs in plot.curve(tuned, "eval")] == [[250, 500, 750, 1000], [11.0, 21.0, 101.0, 201.0]]

    rows = tables()
    assert not (b / "_plots").exists()
    assert sorted(rows) == sorted([("Other-v0", "ppo")] + [("Toy-v0", e) for e in ("ppo", "grpo_g8", fast, slow)])
    assert float(rows[("Toy-v0", "ppo")]["final_mean"]) == 41.5  # the longer copy (a's) of PPO seed 1
    assert capsys.readouterr().err.count("are the same run") == 1
    assert drawn_curve()  # its source in a/, found from b/
    assert len(plot.load_runs(a, b, b / "ft")) == 9  # b/ft's files read once: no "same run" of theirs
    assert capsys.readouterr().err.count("are the same run") == 1

    assert sorted(tables("--exp", "grpo_g8 <- *", "--env", "Toy*")) == [("Toy-v0", slow), ("Toy-v0", fast)]
    assert {r.exp for r in plotted} == {fast, slow} and drawn_curve()  # PPO left out, yet its points come first
    assert sorted(tables("--exp", "grpo_g8")) == sorted(("Toy-v0", e) for e in ("grpo_g8", fast, slow))  # its exp_name
    assert sorted(tables("--exp", "ppo", "--exp", "*<-*", "--env", "Other-v0")) == [("Other-v0", "ppo")]


def test_help_lists_every_flag():
    result = run_plot("--help")
    assert result.returncode == 0
    for flag in (
        "RUNS_DIR [RUNS_DIR ...]",
        "--exp GLOB",
        "--env GLOB",
        "--output-dir",
        "--total-steps",
        "--metric {eval,train}",
        "--x {steps,time}",
        "--total-time SECONDS",
        "--reference CSV",
        "--sweep ARG",
        "--ratio-to ALGO",
        "--smooth",
    ):
        assert flag in result.stdout


def assert_one_line_error(result, expected):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (
        result.stderr
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], "no readable metrics.json under"),
        (["--metric", "best"], "invalid choice: 'best'"),
        (["--total-steps", "0"], "--total-steps must be positive"),
        (["--total-steps", "1e6"], "invalid int value"),
        (["--smooth", "-1"], "--smooth must be"),
        (["--x", "time", "--total-time", "-5"], "--total-time must be a positive number of seconds"),
        (["--total-time", "60"], "--total-time is for --x time"),
        (["--x", "time", "--total-steps", "100"], "--total-steps and --sweep are for --x steps"),
        (["--colour"], "unrecognized arguments: --colour"),
        (["--reference", "/nowhere.csv"], "cannot read --reference /nowhere.csv"),
        (["FULL", "/nowhere"], "error: /nowhere is not a directory"),
        (["/nowhere", "FULL", "/nowhere2"], "error: /nowhere, /nowhere2 are not directories"),
        (["FULL", "--exp", "algo_a", "--exp", "algo_z*"], "--exp algo_z*: matches no run's exp_name"),
        (["FULL", "--env", "Toy"], "--env Toy: matches no run's env_id"),
        (["FULL", "--exp", "algo_a", "--env", "Other-v0"], "no run matches --exp and --env together"),
        (["FULL", "--exp", "algo_b", "--sweep", "lr"], "--sweep lr: no run has that argument"),  # algo_a has it
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(runs_dir, tmp_path, args, expected):
    """RUNS_DIR is empty; FULL, a second RUNS_DIR, holds runs of algo_a on Toy-v0 and algo_b on Other-v0."""
    runs_dir.mkdir()
    full = tmp_path / "full"
    write_run(full, "Toy-v0", "algo_a", 1, eval_returns=[1.0], args={"lr": 1})
    write_run(full, "Other-v0", "algo_b", 1, eval_returns=[1.0])
    assert_one_line_error(run_plot(runs_dir, *[full if arg == "FULL" else arg for arg in args]), expected)
    assert list(runs_dir.iterdir()) == [] and not (full / "_plots").exists()


def test_bad_paths_are_one_line(runs_dir, tmp_path):
    assert_one_line_error(run_plot(tmp_path / "nowhere"), "is not a directory")
    write_run(runs_dir, "Toy-v0", "algo_a", 1, eval_returns=[1.0])
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run_plot(tmp_path / "file"), "is not a directory")
    assert_one_line_error(run_plot(runs_dir, "--output-dir", tmp_path / "file"), "--output-dir")
    for content, expected in (("env,metric,name,mean\nToy-v0,eval,x,abc\n", "line 2: needs"), ("a,b\n1,2\n", "needs env")):
        (tmp_path / "ref.csv").write_text(content)
        assert_one_line_error(run_plot(runs_dir, "--reference", tmp_path / "ref.csv"), expected)
    (tmp_path / "ref.csv").write_text("env,metric,name,mean\nToy-v0,best,x,1\n")
    assert_one_line_error(run_plot(runs_dir, "--reference", tmp_path / "ref.csv"), "metric must be eval or train")
    assert not (runs_dir / "_plots").exists()


def test_crossings_are_found_between_points_and_at_ties():
    assert plot.crossings([0, 1, 2, 3], [1, 2, 3, 4], [4, 3, 2, 1]) == [1.5]
    assert plot.crossings([1, 2, 4, 8], [0, 0, 2, 2], [1, 1, 1, 1], log=True) == [pytest.approx(2**1.5)]
    assert plot.crossings([0, 1, 2], [0, 1, 2], [1, 1, 1]) == [1]  # a tie between a lower and a higher point
    assert plot.crossings([0, 1, 2], [0, 1, 0], [1, 1, 1]) == []  # a touch is not a crossing
    assert plot.crossings([0, 1], [5, 6], [1, 2]) == []


def test_the_delay_sweep_marks_where_grpo_overtakes_ppo(runs_dir):
    """PPO falls with the delay, GRPO does not: one figure, both lines, the crossing between 10 and 100."""
    finals = {"ppo": {1: 3000, 10: 2500, 100: 500, "episode": 150}, "grpo": {1: 1100, 10: 1100, 100: 1050, "episode": 1000}}
    for algo, by_delay in finals.items():
        for delay, value in by_delay.items():
            for seed in (1, 2):
                write_run(
                    runs_dir / f"{algo}{delay}",
                    "Toy-v0",
                    algo,
                    seed,
                    eval_returns=[value + seed],
                    args={"reward_delay": delay},
                )
    fig, ax = plt.subplots()
    assert plot.sweep_panel(ax, plot.load_runs(runs_dir), "reward_delay", "eval", 1000)
    (line,) = [line for line in ax.get_lines() if line.get_label() == "crossing"]
    x = line.get_xdata()[0]  # the delays are categories: 1, 10, 100, episode at 0, 1, 2, 3
    assert 1 < x < 2 and [t.get_text() for t in ax.get_xticklabels()] == ["1", "10", "100", "episode"]
    plt.close(fig)
