"""The steering stage's study on a tiny network and toy envs: α = 0 plays the unsteered episodes
byte for byte and is compared with itself at zero difference; a direction that changes the
actions changes the episodes; directions are unit vectors of the kinds asked for; the summary
reads the table; monotone and "the ends on opposite sides of 0" mean what they say."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from egolens.analysis.intervening import steering_study as ss
from egolens.analysis.reading.probes import fit_probe
from egolens.episodes import episode_table
from egolens.hooks import run_with_cache
from egolens.play import play
from tests.conftest import tiny_net, toy_runner

SITE = "output_layer.hook_post.0"


def recorded(net: torch.nn.Module, steps: int = 60) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (steps, 4, 7)).astype(np.float32)
    obs[..., 0] = 1.0
    q, cache = run_with_cache(net, torch.as_tensor(obs), [SITE])
    action = q.argmax(dim=1).numpy()
    action[:20], action[20:40] = 0, 2                                   # both SLOWER and FASTER present
    return {"obs": obs, "action": action, SITE: cache[SITE].numpy()}


def test_directions_are_unit_vectors_of_each_kind():
    net = tiny_net(seed=3)
    arrays = recorded(net)
    acts, action = ss.site_rows(arrays, SITE)
    probe = fit_probe(acts, (acts[:, 0] > np.median(acts[:, 0])).astype(int), np.arange(60) // 6, "binary", folds=3)
    directions = ss.site_directions(arrays, SITE, probe, "crossing_threat", 3, seed=0)
    assert [d.kind for d in directions] == ["probe", "slower_minus_faster"] + ["random"] * 3
    assert directions[0].source == "crossing_threat"
    for d in directions:
        assert np.linalg.norm(d.vector) == pytest.approx(1.0)
    expected = acts[action == 0].mean(axis=0) - acts[action == 2].mean(axis=0)
    np.testing.assert_allclose(directions[1].vector, expected / np.linalg.norm(expected))
    assert ss.scales_of(arrays, [SITE])[SITE] == pytest.approx(np.sqrt(np.mean(np.sum(acts**2, axis=1))))


def test_alpha_zero_is_the_unsteered_agent_and_a_strong_alpha_changes_the_episodes():
    net = tiny_net(seed=4)
    seeds = list(range(8))
    with toy_runner(1) as runner:
        plain = episode_table(play(net, runner, seeds))
    units = net.output_layer.predict.weight.shape[1]
    towards_faster = net.output_layer.predict.weight[2].detach().double().numpy() - \
        net.output_layer.predict.weight[0].detach().double().numpy()
    directions = [ss.Direction("probe", "probe", "ttc", towards_faster / np.linalg.norm(towards_faster))]
    directions += [ss.Direction(f"random_{i}", "random", "", d)
                   for i, d in enumerate(ss.random_directions(units, 3, seed=0))]
    with toy_runner(2) as runner:
        episodes, comparison = ss.steering_study(net, runner, seeds, {SITE: (1.0, directions)}, [-50.0, 0.0, 50.0],
                                                 resamples=200, seed=0)
    for name in ("probe", "random_0"):
        zero = episodes[(episodes["direction"] == name) & (episodes["alpha"] == 0.0)]
        assert zero[plain.columns].reset_index(drop=True).equals(plain)      # byte for byte, every column
    at_zero = comparison[comparison["alpha"] == 0.0]
    assert (at_zero["diff"] == 0).all() and (at_zero["diff_ci_low"] == 0).all()
    # toy rewards grow with the action index: steering towards FASTER raises returns, away lowers them
    faster = episodes[(episodes["direction"] == "probe") & (episodes["alpha"] == 50.0)]
    slower = episodes[(episodes["direction"] == "probe") & (episodes["alpha"] == -50.0)]
    assert faster["return"].mean() >= plain["return"].mean() > slower["return"].mean()
    with pytest.raises(ValueError, match="must contain 0"):
        ss.steering_study(net, runner, seeds, {SITE: (1.0, directions)}, [1.0], resamples=200, seed=0)
    summary = ss.summarize(comparison, {SITE: 1.0})
    site = summary["sites"]["output_layer_hook_post_0"]
    assert site["probe"]["source"] == "ttc" and site["random"]["directions"] == 3
    assert site["probe"]["collision_diff_highest_alpha"]["alpha"] == 50.0
    assert summary["episodes"] == 8


def test_monotone():
    assert ss.monotone([0.1, 0.2, 0.2, 0.5]) and ss.monotone([0.5, 0.1, 0.0])
    assert not ss.monotone([0.1, 0.3, 0.2]) and not ss.monotone([0.2, 0.2, 0.2])


def test_an_agent_that_never_slows_down_has_no_mean_difference_direction():
    net = tiny_net(seed=3)
    arrays = recorded(net)
    arrays["action"][:] = 2
    acts, _ = ss.site_rows(arrays, SITE)
    probe = fit_probe(acts, (acts[:, 0] > np.median(acts[:, 0])).astype(int), np.arange(60) // 6, "binary", folds=3)
    assert [d.kind for d in ss.site_directions(arrays, SITE, probe, "ttc", 3, seed=0)] == ["probe"] + ["random"] * 3


def collision_rows(direction: str, kind: str, cis: dict[float, tuple[float, float]]) -> pd.DataFrame:
    """Collision comparisons of one direction with α = 0: alpha -> (diff_ci_low, diff_ci_high)."""
    source = "ttc" if kind == "probe" else ""
    return pd.DataFrame([{"site": SITE, "direction": direction, "kind": kind, "source": source,
                          "alpha": a, "metric": "collision", "value": 0.2 + (low + high) / 2, "diff": (low + high) / 2,
                          "diff_ci_low": low, "diff_ci_high": high, "episodes": 20} for a, (low, high) in cis.items()])


def test_ends_opposite_and_changes_somewhere_by_hand():
    turning = collision_rows("probe", "probe", {-2.0: (-0.3, -0.1), 0.0: (0.0, 0.0), 2.0: (0.05, 0.4)})
    assert ss.ends_opposite(turning) is True
    reversed_ = collision_rows("probe", "probe", {-2.0: (0.1, 0.3), 0.0: (0.0, 0.0), 2.0: (-0.4, -0.05)})
    assert ss.ends_opposite(reversed_) is True
    one_end = collision_rows("probe", "probe", {-2.0: (-0.1, 0.1), 0.0: (0.0, 0.0), 2.0: (0.05, 0.4)})
    assert ss.ends_opposite(one_end) is False                           # the negative end's CI includes 0
    same_side = collision_rows("probe", "probe", {-2.0: (0.1, 0.3), 0.0: (0.0, 0.0), 2.0: (0.05, 0.4)})
    assert ss.ends_opposite(same_side) is False
    positive_only = collision_rows("probe", "probe", {0.0: (0.0, 0.0), 1.0: (-0.3, -0.1), 2.0: (0.05, 0.4)})
    assert ss.ends_opposite(positive_only) is None
    assert ss.changes_somewhere(one_end) and not ss.changes_somewhere(
        collision_rows("random_0", "random", {-2.0: (-0.1, 0.1), 0.0: (0.0, 0.0), 2.0: (0.0, 0.2)}))


def with_success(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The collision comparisons with success comparisons at zero difference beside them."""
    collision = pd.concat(tables, ignore_index=True)
    success = collision.assign(metric="success", value=1.0, diff=0.0, diff_ci_low=0.0, diff_ci_high=0.0)
    return pd.concat([collision, success], ignore_index=True)


def test_summary_says_whether_the_safety_direction_steers_collisions_and_the_random_ones_do_not():
    flat = {-2.0: (-0.1, 0.1), 0.0: (0.0, 0.0), 2.0: (-0.05, 0.15)}
    probe = collision_rows("probe", "probe", {-2.0: (-0.3, -0.1), 0.0: (0.0, 0.0), 2.0: (0.05, 0.4)})
    randoms = [collision_rows(f"random_{i}", "random", flat) for i in range(3)]
    summary = ss.summarize(with_success([probe, *randoms]), {SITE: 1.0})
    site = summary["sites"]["output_layer_hook_post_0"]
    assert site["probe"]["collision_ends_opposite"] is True
    assert site["random"]["changing_collision"] == 0 and site["safety_steers_collisions"] is True
    randoms[1] = collision_rows("random_1", "random", {-2.0: (-0.1, 0.1), 0.0: (0.0, 0.0), 2.0: (0.02, 0.2)})
    summary = ss.summarize(with_success([probe, *randoms]), {SITE: 1.0})
    site = summary["sites"]["output_layer_hook_post_0"]
    assert site["random"]["changing_collision"] == 1 and site["safety_steers_collisions"] is False
