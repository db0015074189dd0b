"""The probes stage's study on hand-made networks: a fact that two units of a layer carry
linearly (|vx| large) but the raw observation does not is read at that layer above all three
controls; the untrained network that cannot see vx stays at chance; the summary, the site
verdicts and the steering choice follow from the table; the refitted probe's direction is the
planted one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from egolens.analysis.reading import probe_study as ps
from egolens.analysis.reading.probe_targets import TARGETS, vehicle_rows
from egolens.hooks import run_with_cache
from egolens.probes_config import CATEGORICAL_TARGETS, PROBE_TARGETS, VEHICLE_TARGETS, ProbesConfig
from tests.conftest import tiny_net
from tests.test_probes import VX, vehicle_episodes

SITE = "others_embedding.hook_post.0"


def speed_units_net(sees_vx: bool) -> torch.nn.Module:
    """The tiny net whose first others' embedding layer has unit 0 = relu(vx), unit 1 = relu(−vx)
    (sees_vx), or no weight on vx at all (not sees_vx: nothing there can read it)."""
    net = tiny_net(seed=1)
    with torch.no_grad():
        layer = net.others_embedding.layers[0]
        if sees_vx:
            layer.weight[:2] = 0.0
            layer.weight[0, VX], layer.weight[1, VX] = 1.0, -1.0
            layer.bias[:2] = 0.0
        else:
            layer.weight[:, VX] = 0.0
    return net


def recording(net: torch.nn.Module, obs: np.ndarray, episode: np.ndarray, vehicle_id: np.ndarray) -> ps.Recording:
    sites = [SITE, "output_layer.hook_post.0"]
    _, cache = run_with_cache(net, torch.as_tensor(obs), sites)
    step_index, row = vehicle_rows(obs)
    fast = (np.abs(obs[step_index, row, VX]) > 0.6).astype(float)       # non-linear in vx, linear in the units
    vehicles = pd.DataFrame({"episode": episode[step_index], "vehicle_id": vehicle_id[step_index, row],
                             "comes_close": fast})
    steps = pd.DataFrame({"episode": episode, "step": np.tile(np.arange(8), len(obs) // 8)})
    return ps.Recording({"obs": obs, "episode": episode, **{s: cache[s].numpy() for s in sites}}, vehicles, steps)


@pytest.fixture(scope="module")
def study():
    obs, episode, vehicle_id = vehicle_episodes(episodes=30, steps=8, entities=6, seed=0)
    trained = recording(speed_units_net(True), obs, episode, vehicle_id)
    untrained = recording(speed_units_net(False), obs, episode, vehicle_id)
    cfg = ProbesConfig(targets=["comes_close"], sites=[SITE, "output_layer.hook_post.0"], folds=3,
                       bootstrap_resamples=200)
    return trained, untrained, ps.probe_study(trained, untrained, cfg, seed=0), cfg


def test_the_planted_fact_is_read_above_every_control(study):
    _, _, table, _ = study
    assert set(table["site"]) == {SITE}                                 # the per-step site is not probed
    verdict = ps.site_verdicts(table).iloc[0]
    assert verdict["metric"] == "auc" and verdict["score"] > 0.99
    assert abs(verdict["control_task"] - 0.5) < 0.1                     # labels by vehicle: chance
    assert abs(verdict["untrained"] - 0.5) < 0.1                        # cannot see vx
    assert verdict["obs"] < 0.75                                        # vx alone, linearly: not |vx|
    assert verdict["minus_obs_ci_low"] > 0.15 and verdict["selectivity_ci_low"] > 0.3
    assert verdict["above_controls"]


def test_summary_and_steering_choice_follow_the_table(study):
    trained, _, table, cfg = study
    summary = ps.summarize(table, held_out=9, episodes=30)
    entry = summary["targets"]["comes_close"]
    verdict = ps.site_verdicts(table).iloc[0]
    assert entry["best_site"] == "others_embedding_hook_post_0" and entry["above_controls"]
    assert entry["sites_above_controls"] == 1
    assert entry["above_obs"] is True and entry["above_baseline_before_output"] is True
    assert entry["baseline"] == pytest.approx(0.5)                      # a constant score: AUC 0.5
    assert entry["minus_baseline"] == pytest.approx(verdict["score"] - 0.5)
    assert entry["selectivity"] == pytest.approx(verdict["selectivity"])
    assert ps.steering_choice(ps.site_verdicts(table), SITE, ["crossing", "comes_close"]) == "comes_close"
    with pytest.raises(ValueError, match="no safety target"):
        ps.steering_choice(ps.site_verdicts(table), SITE, ["ttc"])
    fit = ps.fitted_probe(trained, SITE, "comes_close", cfg, seed=0)
    direction = fit.direction / np.linalg.norm(fit.direction)
    assert direction[0] > 0.5 and direction[1] > 0.5                   # |vx| = unit 0 + unit 1


def test_config_names_equal_the_targets_library():
    assert tuple(TARGETS) == PROBE_TARGETS
    assert tuple(n for n, t in TARGETS.items() if t.level == "vehicle") == VEHICLE_TARGETS
    assert set(CATEGORICAL_TARGETS) == {n for n, t in TARGETS.items() if t.kind == "categorical"}


def test_the_table_does_not_depend_on_the_number_of_processes(study):
    trained, untrained, table, cfg = study
    assert cfg.processes == 2
    one = ps.probe_study(trained, untrained, cfg.model_copy(update={"processes": 1}), seed=0)
    pd.testing.assert_frame_equal(one, table)


def test_the_summary_answers_only_what_its_sites_can():
    rows = pd.DataFrame({"target": ["action"] * 2, "site": ["attention_layer.hook_resid", "output_layer.hook_post.0"],
                         "minus_obs_ci_low": [-0.1, np.nan], "minus_baseline_ci_low": [-0.02, 0.2]})
    assert ps._some_site(rows, "minus_obs_ci_low") is False
    assert ps._some_site(rows[rows["site"].map(ps.before_output_mlp)], "minus_baseline_ci_low") is False
    assert ps._some_site(rows, "minus_baseline_ci_low") is True         # only after the output MLP
    assert ps._some_site(rows.assign(minus_obs_ci_low=np.nan), "minus_obs_ci_low") is None


def test_without_intervals_the_summary_cannot_say_a_fact_is_read_above_the_controls(study):
    # a single held-out episode leaves every interval NaN (probes.resampled_scores): the scores
    # stay, but "above the controls" is unanswered (None), not a no and not a yes
    _, _, table, _ = study
    no_intervals = table.assign(ci_low=np.nan, ci_high=np.nan)
    verdict = ps.site_verdicts(no_intervals).iloc[0]
    assert not verdict["controls_checked"] and verdict["score"] > 0.99
    entry = ps.summarize(no_intervals, held_out=1, episodes=3)["targets"]["comes_close"]
    assert entry["above_controls"] is None and entry["above_obs"] is None
    assert ps.summarize(table, held_out=9, episodes=30)["targets"]["comes_close"]["above_controls"] is True
