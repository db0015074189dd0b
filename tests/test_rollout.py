"""Recording episodes: exact row→vehicle links, recorded values equal a fresh forward pass,
tables consistent with the arrays, rendered frames and videos."""

from __future__ import annotations

import io
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from egolens.config import EnvConfig
from egolens.env import make_env, make_runner
from egolens.model import EgoAttentionNetwork
from egolens.play import play
from egolens.rollout import attention_off_ego, play_episodes, rollout_arrays, steps_table, vehicles_table
from egolens.runner import EnvRunner
from egolens.scene import denormalize
from egolens.tracking import ABSENT, VehicleTracker
from egolens.video import episode_images, episode_media, gif_bytes

CFG = EnvConfig()


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return EgoAttentionNetwork().eval()


@pytest.fixture(scope="module")
def episodes(net):
    with EnvRunner([partial(make_env, CFG)]) as runner:
        return play(net, runner, [11, 12, 13], record="steps")


def test_tracking_leaves_observations_unchanged_and_links_rows_to_their_vehicles():
    plain, tracked = make_env(CFG), make_env(CFG)
    tracker = VehicleTracker(tracked)
    rng = np.random.default_rng(0)
    previous: dict[int, np.ndarray] = {}
    for seed in (1, 2):
        a, _ = plain.reset(seed=seed)
        b, _ = tracked.reset(seed=seed)
        previous.clear()
        for _ in range(13):
            np.testing.assert_array_equal(a, b)
            present = b[:, 0] >= 0.5
            assert tracker.ids[0] == 0 and np.all(tracker.ids[~present] == ABSENT)
            assert len(set(tracker.ids[present])) == present.sum()
            k = denormalize(b[None], CFG)
            np.testing.assert_allclose(np.stack([k.x[0], k.y[0]], -1)[present],
                                       np.clip(tracker.positions[present], -100, 100), atol=1e-3)
            for vid, pos in zip(tracker.ids[present], tracker.positions[present]):
                if vid in previous:                           # a followed vehicle moves ≤ 1 s × 20 m/s
                    assert np.linalg.norm(pos - previous[vid]) < 20.0
                previous[vid] = pos
            action = int(rng.integers(3))
            a, _, done, cut, _ = plain.step(action)
            b, *_ = tracked.step(action)
            if done or cut:
                break


def test_recorded_q_and_attention_equal_a_fresh_forward_pass(net, episodes):
    arrays = rollout_arrays(episodes, net)
    obs = torch.as_tensor(arrays["obs"])
    torch.testing.assert_close(torch.as_tensor(arrays["q"]), net(obs), rtol=0, atol=0)
    torch.testing.assert_close(torch.as_tensor(arrays["attention"]), net.get_attention_matrix(obs)[:, :, 0],
                               rtol=0, atol=0)
    np.testing.assert_array_equal(arrays["action"], arrays["q"].argmax(1))
    assert len(arrays["obs"]) == sum(len(e.action) for e in episodes)
    assert arrays["others_embedding.hook_post.1"].shape == (len(obs), 14, 64)


def test_tables_agree_with_the_arrays(net, episodes):
    arrays = rollout_arrays(episodes, net)
    steps = steps_table(episodes, arrays, CFG)
    assert len(steps) == len(arrays["action"])
    assert steps["crashed"].sum() == sum(e.outcome == "collision" for e in episodes)
    assert steps["arrived"].sum() == sum(e.outcome == "arrived" for e in episodes)
    vehicles = vehicles_table(arrays, CFG, 5.0, 5.0, 4.5)
    assert len(vehicles) == int((arrays["obs"][:, 1:, 0] >= 0.5).sum())
    # attention on the others plus on the ego itself sums to one per step and head
    per_step = vehicles.groupby(["episode", "step"])[["attention_h0", "attention_h1"]].sum().to_numpy()
    np.testing.assert_allclose(per_step + arrays["attention"][:, :, 0], 1.0, atol=1e-5)
    assert (vehicles["vehicle_id"] > 0).all()
    # the share off the ego per episode and head is the attention the vehicles table gives the others
    off_ego = attention_off_ego(arrays).set_index(["episode", "head"])
    for h in (0, 1):
        by_episode = vehicles.groupby(["episode", "step"])[f"attention_h{h}"].sum().groupby("episode")
        expected = by_episode.sum() / steps.groupby("episode").size()       # steps without vehicles count 0
        np.testing.assert_allclose(off_ego.xs(h, level="head")["off_ego"], expected.reindex(
            range(len(episodes)), fill_value=0.0), atol=1e-5)
    assert (off_ego["steps"].groupby("episode").first() == steps.groupby("episode").size()).all()


def test_rendered_episode_has_real_frames_and_a_video(net):
    with EnvRunner([partial(make_env, CFG, render_mode="rgb_array")]) as runner:
        episode = play(net, runner, [5], record="frames")[0]
    assert len(episode.frames) == len(episode.action) + 1
    frame = episode.frames[0]
    assert frame.shape == (600, 600, 3) and frame.std() > 5          # not a uniform (black) frame
    arrays = rollout_arrays([episode], net)
    images = episode_images(episode.frames, episode.pixels, episode.positions, episode.obs[..., 0] >= 0.5,
                            arrays["q"], arrays["action"], arrays["attention"], "test", episode.outcome)
    gif = Image.open(io.BytesIO(gif_bytes(images)))
    assert gif.n_frames == len(episode.frames)
    # attention lines start and end where the renderer drew the vehicles: the ego's green body
    # and the other vehicles' blue ones
    for t in range(len(episode.action)):
        pixels = episode.pixels[t](episode.positions[t])
        assert tuple(episode.frames[t][pixels[0, 1], pixels[0, 0]]) == (50, 200, 0)
        for (col, row), present in zip(pixels[1:], episode.obs[t, 1:, 0] >= 0.5):
            if present and 0 <= col < 600 and 0 <= row < 600:
                assert tuple(episode.frames[t][row, col]) == (100, 200, 255)


def test_runner_workers_record_the_same_episodes_as_one_env(net, episodes):
    with make_runner(CFG, 2) as runner:
        parallel = play(net, runner, [11, 12, 13], record="steps")
    for mine, theirs in zip(parallel, episodes):
        for field in ("obs", "action", "reward", "vehicle_id", "positions"):
            np.testing.assert_array_equal(getattr(mine, field), getattr(theirs, field))
        assert (mine.env_seed, mine.ret, mine.length, mine.outcome) == (theirs.env_seed, theirs.ret, theirs.length,
                                                                        theirs.outcome)


def test_play_episodes_renders_the_first_and_plays_the_rest_like_one_env_and_names_their_media(net, episodes):
    played = play_episodes(net, CFG, [5, 11, 12, 13], render_episodes=1, num_envs=2)
    assert [e.env_seed for e in played] == [5, 11, 12, 13]
    assert played[0].frames and not any(e.frames for e in played[1:])
    for mine, theirs in zip(played[1:], episodes):
        np.testing.assert_array_equal(mine.obs, theirs.obs)
    media = episode_media("trained", played, rollout_arrays(played, net), seconds_per_frame=0.5)
    frames = [path for path in media if path.startswith("frames/trained/episode000/")]
    assert len(frames) == len(played[0].frames) and set(media) - set(frames) == {"videos/trained_episode000.gif"}
    assert Image.open(io.BytesIO(media["videos/trained_episode000.gif"])).n_frames == len(played[0].frames)
