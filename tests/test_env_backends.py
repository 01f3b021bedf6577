"""--env-backend envpool in the MLP scripts: the same SAME_STEP autoreset, time limits and episode
statistics as the gymnasium path; and speed.py, which measures both."""

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import grpo_continuous as grpo
import ppo_beta_continuous as ppo_beta
import ppo_continuous as ppo
from conftest import ROOT, assert_clean_error, rollout


@pytest.mark.parametrize("module", [ppo, ppo_beta])
@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_rollouts_end_episodes_the_same_way_on_both_backends(module, backend):
    """InvertedPendulum: reward 1 a step, terminated when the pole tips past 0.2 rad, here truncated after 7 steps. A
    NEXT_STEP reset step would show up as a reward of 0 or an 8-step episode."""
    if backend == "envpool":
        pytest.importorskip("envpool")
    T, N, limit = 60, 3, 7
    buf, next_obs, episodes = rollout(module, T, N, "InvertedPendulum-v4", limit, backend, seed=10, bound=3.0)
    assert bool((buf.rewards == 1.0).all())
    obs, final = np.concatenate([buf.obs.numpy(), next_obs[None]]), {k: v.numpy() for k, v in buf.final_obs.items()}
    assert np.all(np.abs(obs[0]) <= 0.01)  # InvertedPendulum starts within 0.01 of upright and still
    lengths = []
    for i in range(N):
        length = 0
        for t in range(T):
            length += 1
            terminated = bool(buf.terminations[t, i])
            truncated = bool(buf.dones[t, i]) and (not terminated or length == limit)
            assert (truncated or terminated) if length == limit else not truncated  # at the limit both may be set
            if terminated:
                assert abs(final[(t, i)][1]) > 0.2  # the final observation is the tipped pole, kept aside
            if terminated or truncated:
                assert np.all(np.abs(obs[t + 1, i]) <= 0.01) and not np.array_equal(obs[t + 1, i], final[(t, i)])
                lengths.append(length)
                length = 0
            else:
                assert (t, i) not in final
    assert sorted(n for _, _, n in episodes) == sorted(lengths) and len(lengths) >= N * T // limit
    assert all(ret == n for _, ret, n in episodes)
    assert buf.terminations.any() or backend == "envpool"  # the random policy tips some poles over on gymnasium


class OnlyInGymnasium(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


@pytest.mark.parametrize("module", [ppo, ppo_beta, grpo])
def test_envpool_is_refused_for_an_env_it_does_not_have(module):
    pytest.importorskip("envpool")
    if "OnlyInGymnasium-v0" not in gym.registry:
        gym.register("OnlyInGymnasium-v0", entry_point=OnlyInGymnasium, max_episode_steps=5)
    with pytest.raises(module.UsageError, match="EnvPool has no env 'OnlyInGymnasium-v0': use --env-backend gymnasium"):
        module.check_env(module.Args(env_id="OnlyInGymnasium-v0", env_backend="envpool"))
    module.check_env(module.Args(env_id="OnlyInGymnasium-v0", env_backend="gymnasium"))


def test_speed_benchmark_measures_the_raw_env_and_the_training_run_and_their_ratio(tmp_path):
    out = tmp_path / "speed.md"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "speed.py"),
            "--scripts",
            "ppo_continuous",
            "ppo_beta_continuous",
            "--mlp-timesteps",
            "1024",
            "--extra-args=--num-steps 512 --num-minibatches 8",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["script"], r["argv"]) for r in rows] == [("ppo_continuous", ""), ("ppo_beta_continuous", "")]
    for r in rows:
        assert r["raw"] > 0 and r["sps"] > 0 and r["steady_sps"] > 0 and r["ratio"] == pytest.approx(r["sps"] / r["raw"])
        assert r["round"] == 1 and r["vs_cleanrl"] != r["vs_cleanrl"]  # NaN: no CleanRL run to compare with
        assert f"| {r['sps']:,.0f} | {r['steady_sps']:,.0f} |" in out.read_text() and f"**{r['ratio']:.2f}**" in result.stdout
        assert (
            0 < r["rollout_s"] and 0 < r["update_s"] and f"| {r['rollout_s']:.3f} | {r['update_s']:.3f} | - |" in result.stdout
        )
    assert list(tmp_path.iterdir()) == [out, out.with_suffix(".json")]  # the training runs went to a temporary directory
    again = tmp_path / "again.md"  # the table again from the numbers, measuring nothing
    subprocess.run(
        [sys.executable, str(ROOT / "speed.py"), "--from-json", str(out.with_suffix(".json")), "--output", str(again)]
    )
    assert again.read_text() == out.read_text()


def test_speed_table_gives_compile_over_eager_in_the_same_round(tmp_path):
    """The --compile row's steady SPS over the eager row's of its round, script and other flags; rows of an older
    FILE.json, without the phase columns, still make a table."""
    row = {"raw": 1000.0, "sps": 500.0, "first_iteration_extra_s": 0.0, "ratio": 0.5, "rollout_s": 1.0, "update_s": 0.5}
    rows = [{**row, "round": 1, "script": "ppo_continuous", "argv": "", "steady_sps": 400.0}]
    rows += [{**row, "round": 1, "script": "ppo_continuous", "argv": "--compile", "steady_sps": 520.0, "update_s": 0.2}]
    rows += [{**row, "round": 2, "script": "ppo_continuous", "argv": "--compile", "steady_sps": 600.0}]  # no eager row
    rows += [{k: v for k, v in row.items() if not k.endswith("_s")} | {"round": 1, "script": "grpo_continuous", "argv": ""}]
    rows[-1] |= {"steady_sps": 300.0, "first_iteration_extra_s": 0.0}
    (tmp_path / "in.json").write_text(json.dumps(rows))
    result = subprocess.run(
        [sys.executable, str(ROOT / "speed.py"), "--from-json", str(tmp_path / "in.json")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert lines[0].endswith("| 1.000 | 0.500 | - |") and lines[1].endswith("| 1.000 | 0.200 | 1.30 |")
    assert lines[2].endswith("| - |") and lines[3].endswith("| - | - | - |")


def test_speed_benchmark_rejects_bad_input_in_one_line(tmp_path):
    for argv in (["--scripts", "ppo_nonexistent"], ["--rounds", "0"], ["--mlp-timesteps", "0"], ["--cleanrl-python", "/no"]):
        result = subprocess.run(
            [sys.executable, str(ROOT / "speed.py"), *argv, "--output", str(tmp_path / "s.md")], capture_output=True, text=True
        )
        assert_clean_error(result, "")
    assert not list(tmp_path.iterdir())
