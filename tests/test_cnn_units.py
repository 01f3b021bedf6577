"""ppo_cnn_carracing.py and grpo_cnn_carracing.py piece by piece: the CNN's shapes, the preprocessing
wrappers (frame skip, stack order, uint8 frames, resize, early end), and the same-track groups."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import grpo_cnn_carracing as grpo
import ppo_cnn_carracing as ppo

BRAKE = np.array([0.0, 0.0, 1.0], np.float32)  # a car that never moves: every frame costs 0.1


def carracing(module=ppo, **kwargs):
    return module.make_env(module.Args(**{"max_episode_steps": 50, **kwargs}))()


@pytest.mark.parametrize("module", [ppo, grpo])
@pytest.mark.parametrize("config", [
    {},  # the defaults: 4 stacked 64x64 grayscale frames, the Nature-DQN trunk
    {"grayscale": False, "resize": None, "frame_stack": 2},  # 96x96 colour frames: 6 input channels
    {"resize": (84, 48), "frame_stack": 1, "cnn_channels": (16, 32), "cnn_kernel_sizes": (8, 4), "cnn_strides": (4, 2),
     "cnn_feature_size": 128, "hidden_sizes": (64, 64), "shared_trunk": False},
])
def test_cnn_output_shapes_across_configurations(module, config):
    if module is grpo:
        config = {k: v for k, v in config.items() if k != "shared_trunk"}  # GRPO has no critic to share with
    args = module.Args(**config)
    obs_shape, act_space = module.check_env(args)
    env = module.make_env(args)()
    assert env.observation_space.shape == obs_shape and env.observation_space.dtype == np.uint8  # check_env's arithmetic
    env.close()
    agent = module.Agent(obs_shape, act_space.shape[0], args)
    obs = torch.randint(0, 256, (5, *obs_shape), dtype=torch.uint8)
    features = agent.actor_trunk(obs)
    assert features.shape == (5, args.cnn_feature_size) and (features >= 0).all()
    assert agent.get_actor_params(obs).shape == (5, 6)  # alpha and beta of steer, gas, brake
    # frames are scaled to [0, 1] inside the network: a white frame is the float frame of ones
    trunk = agent.actor_trunk
    ones = torch.ones(1, obs_shape[0] * obs_shape[3], *obs_shape[1:3])
    assert torch.allclose(trunk(torch.full((1, *obs_shape), 255, dtype=torch.uint8)), trunk.fc(trunk.convs(ones)))
    if module is ppo:
        assert agent.get_value(obs).shape == (5, 1)
        actor_features, critic_features = agent.features(obs)
        assert (actor_features is critic_features) == args.shared_trunk
        assert (agent.critic_trunk is None) == args.shared_trunk
    else:
        assert agent.log_prob(obs, torch.full((5, 3), 0.5)).shape == (5,)


def test_resize_is_area_averaging():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    half = ppo.resize_frame(frame, ppo.area_weights(96, 48), ppo.area_weights(96, 48))
    blocks = frame.reshape(48, 2, 48, 2, 3).astype(np.float64).mean((1, 3))
    assert half.dtype == np.uint8 and np.abs(half.astype(np.float64) - blocks).max() <= 0.5 + 1e-3
    flat = np.full((96, 96, 1), 77, np.uint8)  # any size: a flat image stays flat
    assert (ppo.resize_frame(flat, ppo.area_weights(96, 64), ppo.area_weights(96, 50)) == 77).all()


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
    assert ppo.Args().max_negative_steps is None  # off by default


def test_rollout_buffer_holds_the_env_frames_as_uint8():
    args = ppo.Args(num_envs=2, vector_mode="sync", max_episode_steps=50, num_steps=6)
    envs = ppo.make_vector_env(args)
    next_obs, _ = envs.reset(seed=[1, 2])
    first = next_obs.copy()
    obs_shape, act_space = ppo.check_env(args)
    agent = ppo.Agent(obs_shape, 3, args)
    rollout = ppo.Rollout(6, 2, obs_shape, 3)
    low, high = act_space.low, act_space.high
    ppo.collect_rollout(envs, next_obs, agent, ppo.RolloutActor(agent, "cpu"), np.random.default_rng(0),
                        ppo.RewardScaler(2, 0.99, 10.0), rollout, low, high, 0, lambda *a: None)
    envs.close()
    assert rollout.obs.dtype == np.uint8 and rollout.obs.shape == (6, 2, 4, 64, 64, 1)
    assert (rollout.obs[0] == first).all() and not (rollout.obs[-1] == first).all()


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_members_reset_with_one_seed_drive_the_same_track(backend):
    """CarRacing generates its track from the reset seed: a group's members race on one track. EnvPool
    cannot reset with a seed: each member gets a pool made with its group's seed."""
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

    # in the training loop: 2 groups of 2 members, stepped by 2 worker processes
    args = grpo.Args(max_episode_steps=20, num_groups=2, group_size=2, env_workers=2, env_backend=backend)
    pool = grpo.make_member_pool(args, 4)
    assert isinstance(pool, grpo.EnvPoolMembers if backend == "envpool" else grpo.MemberPool)
    obs_shape, act_space = grpo.check_env(args)
    agent = grpo.Agent(obs_shape, 3, args)
    episodes = []
    rollout, _, _ = grpo.collect_group_rollouts(pool, agent, grpo.RolloutActor(agent, "cpu"), np.random.default_rng(0), [11, 12], 2,
                                                act_space.low, act_space.high, 0, lambda *e: episodes.append(e))
    pool.close()
    first = rollout.obs[0]
    assert rollout.obs.dtype == np.uint8 and rollout.obs.shape == (5, 4, *obs_shape)  # 20 frames = 5 steps of 4
    assert (first[0] == first[1]).all() and (first[2] == first[3]).all() and not (first[0] == first[2]).all()
    assert not (rollout.obs[-1][0] == rollout.obs[-1][1]).all()  # sampled actions drive the members apart
    assert len(episodes) == 4 and rollout.mask.all()


# ---- --env-backend envpool: the same observations, SAME_STEP autoreset, same-track groups ----

@pytest.mark.parametrize("module", [ppo, grpo])
@pytest.mark.parametrize("config", [{}, {"grayscale": False, "resize": (84, 48), "frame_stack": 2}])
def test_envpool_pipeline_gives_the_gymnasium_wrappers_bytes_on_the_same_frames(module, config):
    """EnvPool's frames go through FramePipeline (numpy, on the batch); gymnasium's through make_env's
    wrappers. Fed the same frames, both must give the network identical arrays."""
    wrapped = carracing(module, frame_skip=1, **config)
    raw = gym.make("CarRacing-v3", max_episode_steps=50)
    pipeline = module.FramePipeline(module.Args(**config), 2, (96, 96, 3))
    obs, _ = wrapped.reset(seed=3)
    frame, _ = raw.reset(seed=3)
    pipeline.reset(np.array([1]), frame[None])
    assert (pipeline.stack[1] == obs).all()
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = np.array([rng.uniform(-1, 1), 1.0, 0.0], np.float32)
        obs, frame = wrapped.step(action)[0], raw.step(action)[0]
        pipeline.push(np.array([1]), frame[None])
        assert pipeline.stack[1].dtype == np.uint8 and (pipeline.stack[1] == obs).all()
    assert not (pipeline.stack[1][0] == pipeline.stack[1][-1]).all() and not pipeline.stack[0].any()  # env 0 untouched


def test_envpool_vector_env_autoresets_as_gymnasium_same_step():
    """10-frame episodes at frame skip 4 last 3 agent steps (4 + 4 + 2 frames): the third reports the
    truncation with the episode's final observation, and already returns the next episode's first; the
    step after it is a real step of the new episode, never EnvPool's reset step (reward 0, action ignored)."""
    pytest.importorskip("envpool")
    args = ppo.Args(env_backend="envpool", num_envs=2, max_episode_steps=10, frame_skip=4, num_steps=7)
    envs = ppo.make_vector_env(args)
    next_obs, _ = envs.reset(seed=[1, 2])
    obs_shape, act_space = ppo.check_env(args)
    agent = ppo.Agent(obs_shape, 3, args)
    rollout, episodes = ppo.Rollout(7, 2, obs_shape, 3), []
    ppo.collect_rollout(envs, next_obs, agent, ppo.RolloutActor(agent, "cpu"), np.random.default_rng(0),
                        ppo.RewardScaler(2, 0.99, 10.0, enabled=False), rollout, act_space.low, act_space.high, 0,
                        lambda *e: episodes.append(e))
    envs.close()
    assert rollout.truncations[:, 0].tolist() == rollout.truncations[:, 1].tolist() == [0, 0, 1, 0, 0, 1, 0]
    assert not rollout.terminations.any() and [(t, i) for t, i in rollout.final_obs_at] == [(2, 0), (2, 1), (5, 0), (5, 1)]
    rewards = rollout.rewards
    assert [(step, length) for step, _, length in episodes] == [(6, 3), (6, 3), (12, 3), (12, 3)]
    assert [ret for _, ret, _ in episodes] == pytest.approx([rewards[:3, 0].sum(), rewards[:3, 1].sum(),
                                                            rewards[3:6, 0].sum(), rewards[3:6, 1].sum()], abs=1e-5)
    for t in (3, 6):  # a new episode starts from its first frame repeated, and its first step is real (the first tile)
        assert all((rollout.obs[t, i] == rollout.obs[t, i, :1]).all() for i in range(2)) and (rewards[t] > 1).all()
    final_obs = dict(zip(rollout.final_obs_at, rollout.final_obs))
    assert not (final_obs[(2, 0)] == rollout.obs[3, 0]).all()  # the bootstrap sees the ended episode's last frames
    assert (final_obs[(2, 0)][:-1] == rollout.obs[2, 0][1:]).all()  # ... stacked after the step's frames


def test_envpool_carracing_is_gymnasiums_task():
    """EnvPool's CarRacing-v3: 1000-frame time limit (250 agent steps at frame skip 4, truncated), the
    reward scale (-0.1 a frame, +1000/N a tile: a braking car scores about -100 + one tile), and
    --max-negative-steps truncating after that many negative steps."""
    pytest.importorskip("envpool")
    envs = ppo.make_vector_env(ppo.Args(env_backend="envpool", num_envs=1))
    envs.reset(seed=[4])
    rewards = [envs.step(BRAKE[None])[1:4] for _ in range(250)]
    assert [bool(r[2][0]) for r in rewards] == [False] * 249 + [True] and not any(r[1][0] for r in rewards)
    assert -100 < sum(r[0][0] for r in rewards) < -90
    envs.close()
    envs = ppo.make_vector_env(ppo.Args(env_backend="envpool", num_envs=1, frame_skip=2, max_negative_steps=6))
    envs.reset(seed=[4])
    steps = [envs.step(BRAKE[None])[1:4] for _ in range(7)]
    assert [bool(s[2][0]) for s in steps] == [False] * 6 + [True] and (np.array([s[0][0] for s in steps[1:]]) < 0).all()
    envs.close()


@pytest.mark.parametrize("module", [ppo, grpo])
def test_batch_grayscale_is_gymnasiums_to_the_bit(module):
    gray = gym.wrappers.GrayscaleObservation(gym.make("CarRacing-v3"), keep_dim=True)
    frames = np.random.default_rng(0).integers(0, 256, (16, 96, 96, 3), dtype=np.uint8)
    assert np.array_equal(module.grayscale_frames(frames), np.stack([gray.func(frame) for frame in frames]))
    gray.close()
