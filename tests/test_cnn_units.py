"""ppo_cnn_carracing.py and grpo_cnn_carracing.py piece by piece: the CNN's shapes, the preprocessing wrappers (frame
skip, stack order, uint8 frames, resize, early end), EnvPool's batched pipeline and autoreset, same-track groups."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import grpo_cnn_carracing as grpo
import ppo_cnn_carracing as ppo
from envlib import Episodes, RewardDelay, RewardScaler
from runlib import Timings

BRAKE = np.array([0.0, 0.0, 1.0], np.float32)  # a car that never moves: every frame costs 0.1
LOW, HIGH = torch.tensor([-1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 1.0])  # CarRacing's bounds, float32


def carracing(module=ppo, **kwargs):
    return module.make_env(module.Args(**{"max_episode_steps": 50, **kwargs}))


def check_env(module, args):
    """The script's checks of args and env, as its main runs them: the observations' shape and the action space."""
    obs_space, act_space = module.check_env(args, whole_episodes=module is grpo)
    return module.check_spaces(args, obs_space, act_space), act_space


def rollout(envs, T, seed):
    """ppo's collect_rollout of a fresh agent for T steps; returns (the Rollout, the first obs, the ended episodes as
    [(t, return, length)])."""
    next_obs = envs.reset(seed=seed)[0].copy()
    (N, *obs_shape) = next_obs.shape
    agent = ppo.Agent(tuple(obs_shape), 3, ppo.Args())
    buf, ended, raw_rewards = ppo.Rollout.empty(T, N, tuple(obs_shape), 3), [], RewardScaler(N, 0.99, 10.0, enabled=False)

    def on_end(*episode):
        ended.append(episode)

    with torch.inference_mode():
        ppo.collect_rollout(
            envs, next_obs, agent.sample, raw_rewards, RewardDelay(N, 1), buf, LOW, HIGH, Episodes(N), on_end, Timings()
        )
    envs.close()
    return buf, next_obs, ended


SMALL_CNN = dict(
    cnn_channels=(16, 32), cnn_kernel_sizes=(8, 4), cnn_strides=(4, 2), cnn_feature_size=128, hidden_sizes=(64, 64)
)
CONFIGS = [
    ({}, (4, 64, 64, 1)),  # the defaults: 4 stacked 64x64 grayscale frames, the Nature-DQN trunk
    ({"grayscale": False, "resize": None, "frame_stack": 2}, (2, 96, 96, 3)),  # colour frames: 6 input channels
    ({"resize": (84, 48), "frame_stack": 1, **SMALL_CNN, "shared_trunk": False}, (1, 84, 48, 1)),
]


@pytest.mark.parametrize("module", [ppo, grpo])
@pytest.mark.parametrize("config, shape", CONFIGS)
def test_cnn_output_shapes_across_configurations(module, config, shape):
    if module is grpo:
        config = {k: v for k, v in config.items() if k != "shared_trunk"}  # GRPO has no critic to share with
    args = module.Args(**config)
    obs_shape, act_space = check_env(module, args)
    env = module.make_env(args)
    frames = env.reset(seed=0)[0]
    assert obs_shape == env.observation_space.shape == frames.shape == shape and frames.dtype == np.uint8
    env.close()
    agent = module.Agent(obs_shape, act_space.shape[0], args)
    obs = torch.randint(0, 256, (5, *obs_shape), dtype=torch.uint8)
    features = agent.actor_trunk(obs)
    assert features.shape == (5, args.cnn_feature_size) and (features >= 0).all()
    dist = agent.dist(obs)  # a Beta per action: steer, gas, brake
    assert dist.mean.shape == (5, 3) and (dist.concentration1 > 1).all() and (dist.concentration0 > 1).all()
    assert agent.sample(obs).shape == (5, 3)
    # frames are scaled to [0, 1] inside the network: a white frame is the float frame of ones
    trunk = agent.actor_trunk
    ones = torch.ones(1, obs_shape[0] * obs_shape[3], *obs_shape[1:3])
    assert torch.allclose(trunk(torch.full((1, *obs_shape), 255, dtype=torch.uint8)), trunk.fc(trunk.convs(ones)))
    if module is ppo:
        calls = []
        trunk.register_forward_hook(lambda *_: calls.append(1))
        _, value = agent.dist_and_value(obs)
        assert value.shape == (5, 1) and len(calls) == 1  # one pass of the actor's trunk, shared or not
        assert (agent.critic_trunk is None) == args.shared_trunk


def test_resize_is_area_averaging():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    half = ppo.Frames.of(ppo.Args(grayscale=False, resize=(48, 48))).preprocess(frame[None])[0]
    blocks = frame.reshape(48, 2, 48, 2, 3).astype(np.float64).mean((1, 3))
    assert half.dtype == np.uint8 and np.abs(half.astype(np.float64) - blocks).max() <= 0.5 + 1e-3
    flat = np.full((1, 96, 96, 3), 77, np.uint8)  # any size: a flat image stays flat
    assert (ppo.Frames.of(ppo.Args(resize=(64, 50))).preprocess(flat) == 77).all()


def test_grayscale_is_gymnasiums_to_the_bit():
    gray = gym.wrappers.GrayscaleObservation(gym.make("CarRacing-v3"), keep_dim=True)
    frames = np.random.default_rng(0).integers(0, 256, (16, 96, 96, 3), dtype=np.uint8)
    expected = np.stack([gray.func(frame) for frame in frames])
    assert np.array_equal(ppo.Frames.of(ppo.Args(resize=None)).preprocess(frames), expected)
    gray.close()


def test_frames_are_stacked_oldest_first_as_uint8():
    stacked, single = carracing(frame_stack=3, frame_skip=1), carracing(frame_stack=1, frame_skip=1)
    obs, _ = stacked.reset(seed=5)
    frame, _ = single.reset(seed=5)
    assert obs.dtype == np.uint8 and obs.shape == (3, 64, 64, 1)
    assert all((obs[k] == frame[0]).all() for k in range(3))  # at reset, the stack is the first frame
    frames = [frame[0]] * 3
    rng = np.random.default_rng(0)
    for _ in range(4):
        action = np.array([rng.uniform(-1, 1), 1.0, 0.0], np.float32)
        obs = stacked.step(action)[0]
        frames.append(single.step(action)[0][0])
        assert (obs == np.stack(frames[-3:])).all()  # the newest frame is last
    assert not (frames[-1] == frames[-2]).all()  # the frames really changed


def test_frame_skip_repeats_the_action_and_sums_rewards():
    skipped, raw = carracing(frame_skip=3, max_episode_steps=5), carracing(frame_skip=1, frame_stack=1, max_episode_steps=5)
    skipped.reset(seed=2)
    raw.reset(seed=2)
    action = np.array([0.3, 1.0, 0.0], np.float32)
    obs, reward, terminated, truncated, _ = skipped.step(action)
    raw_steps = [raw.step(action) for _ in range(3)]
    assert reward == pytest.approx(sum(step[1] for step in raw_steps), abs=1e-9) and not truncated
    assert (obs[-1] == raw_steps[-1][0][0]).all()
    reward, truncated = skipped.step(action)[1:4:2]  # frames 4 and 5: the time limit ends the skip early
    raw_steps = [raw.step(action) for _ in range(2)]
    assert truncated and raw_steps[-1][3] and reward == pytest.approx(sum(step[1] for step in raw_steps), abs=1e-9)


def test_max_negative_steps_truncates_after_that_many_negative_steps():
    env = carracing(max_negative_steps=6, frame_skip=2, max_episode_steps=1000)
    env.reset(seed=4)
    negative, length, done = 0, 0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(BRAKE)
        negative, length, done = negative + 1 if reward < 0 else 0, length + 1, terminated or truncated
    assert truncated and not terminated and negative == 6 and length < 50
    assert ppo.Args().max_negative_steps is None and grpo.Args().max_negative_steps is None  # off by default


def test_rollout_buffer_holds_the_env_frames_as_uint8():
    buf, first, _ = rollout(ppo.make_vector_env(ppo.Args(max_episode_steps=50, num_envs=2)), 6, [1, 2])
    assert buf.obs.dtype == torch.uint8 and buf.obs.shape == (6, 2, 4, 64, 64, 1)
    assert (buf.obs[0].numpy() == first).all() and not (buf.obs[-1].numpy() == first).all()
    assert ((buf.actions > 0) & (buf.actions < 1)).all()  # Beta samples x, not env actions


def test_make_batch_in_chunks_is_the_batch_at_once_and_bootstraps_only_truncations():
    torch.manual_seed(0)
    T, N, obs_shape, args = 6, 2, (4, 64, 64, 1), ppo.Args(**SMALL_CNN)
    agent, rng = ppo.Agent(obs_shape, 3, args), np.random.default_rng(0)
    frames = rng.integers(0, 256, (T + 3, N, *obs_shape), np.uint8)  # the rollout, next_obs, two final observations
    buf = ppo.Rollout.empty(T, N, obs_shape, 3)
    buf.obs[:] = torch.from_numpy(frames[:T])
    buf.actions[:] = torch.from_numpy(rng.uniform(0.1, 0.9, (T, N, 3)))
    buf.rewards[:] = 1.0
    buf.dones[2, 0] = buf.dones[4, 1] = buf.terminations[4, 1] = 1.0  # a truncation, a termination
    buf.final_obs.update({(2, 0): torch.from_numpy(frames[T + 1, 0]), (4, 1): torch.from_numpy(frames[T + 2, 1])})
    whole, chunked = (ppo.make_batch(agent, buf, frames[T], args, torch.device("cpu"), chunk=c) for c in (10**6, 5))
    for key in whole._fields:
        torch.testing.assert_close(getattr(chunked, key), getattr(whole, key))
    assert whole.obs.dtype == torch.uint8

    def value(frame):
        with torch.no_grad():
            return agent.dist_and_value(torch.from_numpy(frame[None]))[1].item()

    advantages = whole.advantages.view(T, N)  # where an episode ends, GAE carries nothing: the TD error
    assert advantages[2, 0].item() == pytest.approx(1.0 + args.gamma * value(frames[T + 1, 0]) - value(frames[2, 0]), abs=1e-5)
    assert advantages[4, 1].item() == pytest.approx(1.0 - value(frames[4, 1]), abs=1e-5)


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_members_reset_with_one_seed_drive_the_same_track(backend):
    """CarRacing generates its track from the reset seed: a group's members race on one track. EnvPool's reset takes no
    seed: its pool is made with each member's group seed."""
    if backend == "envpool":
        pytest.importorskip("envpool")
    tracks = []
    for seed in (7, 7, 8):
        env = carracing(grpo)
        env.reset(seed=seed)
        tracks.append(np.array(env.unwrapped.track))
        env.close()
    assert np.array_equal(tracks[0], tracks[1])
    assert tracks[0].shape != tracks[2].shape or not np.allclose(tracks[0], tracks[2])

    args = grpo.Args(max_episode_steps=20, num_groups=2, group_size=2, env_backend=backend)  # in the training loop
    obs_shape, act_space = check_env(grpo, args)
    members, agent, episodes = grpo.make_members(args), grpo.Agent(obs_shape, 3, args), []
    with torch.inference_mode():
        rollout = grpo.collect_group_rollouts(
            members, agent.sample, [11, 12], 2, LOW, HIGH, lambda *e: episodes.append(e), 10**6, Timings()
        )
    members.close()
    obs = rollout.obs.numpy()
    assert obs.dtype == np.uint8 and obs.shape == (5, 4, *obs_shape)  # 20 frames = 5 steps of 4
    assert (obs[0, 0] == obs[0, 1]).all() and (obs[0, 2] == obs[0, 3]).all() and not (obs[0, 0] == obs[0, 2]).all()
    assert not (obs[-1, 0] == obs[-1, 1]).all()  # sampled actions drive the members apart
    assert len(episodes) == 4 and rollout.mask.all()


# ---- --env-backend envpool: the same observations, SAME_STEP autoreset ----


class GymnasiumPool:
    """EnvPool's calls served by gymnasium's CarRacing: FramesEnvPool's own code on gymnasium's frames."""

    def __init__(self, seeds, max_episode_steps):
        self.envs, self.seeds = [gym.make("CarRacing-v3", max_episode_steps=max_episode_steps) for _ in seeds], seeds

    def reset(self, ids=None):  # EnvPool seeds its envs when it makes them; gymnasium's autoreset passes no seed either
        seeded, ids = ids is None, np.arange(len(self.envs)) if ids is None else ids
        return np.stack([self.envs[i].reset(seed=self.seeds[i] if seeded else None)[0] for i in ids]), {"env_id": ids}

    def step(self, actions, ids):
        raw, reward, terminated, truncated = zip(*(self.envs[i].step(a)[:4] for i, a in zip(ids, actions)))
        return np.stack(raw), np.array(reward), np.array(terminated), np.array(truncated), {"env_id": ids}

    def close(self):
        for env in self.envs:
            env.close()


@pytest.mark.parametrize("config", [{}, {"grayscale": False, "resize": (84, 48), "frame_stack": 2}])
def test_envpool_pipeline_gives_the_gymnasium_wrappers_bytes_on_the_same_frames(monkeypatch, config):
    """FramesEnvPool does the frame skip, early end, preprocessing, frame stack and SAME_STEP autoreset on the batch;
    gymnasium's vector env runs make_env's wrappers (Frames.wrap). Fed gymnasium's frames, the batch code must give the
    network, the rewards and the bootstrap the same bytes: here through two episode ends of each env (env 0 brakes and is
    cut by --max-negative-steps after 5 steps, env 1 drives until the 12-frame time limit after 6)."""
    envpool = pytest.importorskip("envpool")
    args = ppo.Args(frame_skip=2, max_episode_steps=12, max_negative_steps=4, num_envs=2, **config)
    gymnasium = ppo.make_vector_env(args)
    batched = ppo.make_vector_env(ppo.Args(**{**vars(args), "env_backend": "envpool"}))
    assert isinstance(batched, ppo.FramesEnvPool)
    monkeypatch.setattr(envpool, "make", lambda env_id, kind, env_seed, **_: GymnasiumPool(env_seed, args.max_episode_steps))
    expected, got = gymnasium.reset(seed=[3, 4])[0], batched.reset(seed=[3, 4])[0]
    assert expected.dtype == got.dtype == np.uint8 and np.array_equal(expected, got)
    rng, ends = np.random.default_rng(0), []
    for _ in range(13):
        action = np.stack([BRAKE, [rng.uniform(-1, 1), 1.0, 0.0]]).astype(np.float32)
        (*expected, expected_info), (*got, info) = gymnasium.step(action), batched.step(action)
        assert all(np.array_equal(e, g) for e, g in zip(expected, got))
        done = np.flatnonzero(got[2] | got[3])
        assert all(np.array_equal(expected_info["final_obs"][i], info["final_obs"][i]) for i in done)
        ends += [(i, bool(got[3][i])) for i in done]
    gymnasium.close()
    batched.close()
    assert ends == [(0, True), (1, True), (0, True), (1, True)]  # both truncations, 5 and 6 steps long


def test_envpool_autoresets_as_gymnasium_same_step():
    """10-frame episodes at frame skip 4 last 3 agent steps (4 + 4 + 2 frames): the third reports the truncation with the
    episode's final observation, and already returns the next episode's first; the step after it is a real step of the
    new episode, never EnvPool's reset step (reward 0, action ignored)."""
    pytest.importorskip("envpool")
    args = ppo.Args(env_backend="envpool", max_episode_steps=10, frame_skip=4, num_envs=2)
    buf, _, ended = rollout(ppo.make_vector_env(args), 7, [1, 2])
    assert buf.dones[:, 0].tolist() == buf.dones[:, 1].tolist() == [0, 0, 1, 0, 0, 1, 0]
    assert not buf.terminations.any() and list(buf.final_obs) == [(2, 0), (2, 1), (5, 0), (5, 1)]
    rewards = buf.rewards
    assert [(t, length) for t, _, length in ended] == [(2, 3), (2, 3), (5, 3), (5, 3)]
    assert [ret for _, ret, _ in ended] == pytest.approx(
        [rewards[:3, i].sum().item() for i in (0, 1)] + [rewards[3:6, i].sum().item() for i in (0, 1)], abs=1e-5
    )
    for t in (3, 6):  # a new episode starts from its first frame repeated, and its first step is real (the first tile)
        assert all((buf.obs[t, i] == buf.obs[t, i, :1]).all() for i in range(2)) and (rewards[t] > 1).all()
    final_obs = buf.final_obs
    assert not (final_obs[(2, 0)] == buf.obs[3, 0]).all()  # the bootstrap sees the ended episode's last frames ...
    assert (final_obs[(2, 0)][:-1] == buf.obs[2, 0][1:]).all()  # ... stacked after the step's frames


def test_envpool_carracing_is_gymnasiums_task():
    """EnvPool's CarRacing-v3: 1000-frame time limit (250 agent steps at frame skip 4, truncated), the reward scale (-0.1 a
    frame, +1000/N a tile: a braking car scores about -100 + one tile), --max-negative-steps truncating."""
    pytest.importorskip("envpool")
    envs = ppo.make_vector_env(ppo.Args(env_backend="envpool", num_envs=1))
    envs.reset(seed=4)
    rewards = [envs.step(BRAKE[None])[1:4] for _ in range(250)]
    assert [bool(r[2][0]) for r in rewards] == [False] * 249 + [True] and not any(r[1][0] for r in rewards)
    assert -100 < sum(r[0][0] for r in rewards) < -90
    envs.close()
    envs = ppo.make_vector_env(ppo.Args(env_backend="envpool", frame_skip=2, max_negative_steps=6, num_envs=1))
    envs.reset(seed=4)
    steps = [envs.step(BRAKE[None])[1:4] for _ in range(7)]
    assert [bool(s[2][0]) for s in steps] == [False] * 6 + [True] and (np.array([s[0][0] for s in steps[1:]]) < 0).all()
    envs.close()
