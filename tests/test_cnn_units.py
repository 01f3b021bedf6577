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


def test_members_reset_with_one_seed_drive_the_same_track():
    """CarRacing generates its track from the reset seed: a group's members race on one track."""
    tracks = []
    for seed in (7, 7, 8):
        env = carracing(grpo)
        env.reset(seed=seed)
        tracks.append(np.array(env.unwrapped.track))
        env.close()
    assert np.array_equal(tracks[0], tracks[1])
    assert tracks[0].shape != tracks[2].shape or not np.allclose(tracks[0], tracks[2])

    # in the training loop: 2 groups of 2 members, stepped by 2 worker processes
    args = grpo.Args(max_episode_steps=20, num_groups=2, group_size=2)
    pool = grpo.MemberPool(args, 4, num_workers=2)
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
