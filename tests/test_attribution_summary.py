"""summary.json of the attributions study: its numbers recomputed from a tiny network directly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from egolens.analysis.attribution.attribution_study import NetworkAnalysis, Steps, combine
from egolens.analysis.attribution.attribution_summary import cut_key, paired_over_steps, summarize
from egolens.analysis.attribution.baselines import ego_alone
from egolens.analysis.attribution.shapley import shapley_vehicles
from egolens.analysis_config import AttributionsConfig, SceneConfig
from egolens.config import EnvConfig
from egolens.scene import scene_facts
from tests.conftest import random_obs, tiny_net

CFG = AttributionsConfig(max_steps=5, path_grid=16, path_grid_max=64, neuron_steps=8, internal_batch_size=512,
                         shapley_samples=3, top_neurons=1, random_orders=1)


def rollouts(net: torch.nn.Module, n: int = 9, seed: int = 0) -> dict[str, np.ndarray]:
    """Recorded-rollout arrays of `net` playing greedily on random observations (two episodes)."""
    obs = random_obs(n, seed=seed)
    with torch.no_grad():
        action = net(obs).argmax(1)
        attention = net.get_attention_matrix(obs)[:, :, 0]
    return {"obs": obs.numpy(), "episode": np.repeat([0, 1], [4, n - 4]), "step": np.r_[np.arange(4), np.arange(n - 4)],
            "action": action.numpy(), "vehicle_id": np.arange(n * 15).reshape(n, 15), "attention": attention.numpy()}


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the ranks (no ties in continuous data)."""
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


@pytest.fixture(scope="module")
def study():
    torch.set_num_threads(1)                   # module scope: set up before the autouse fixture runs
    torch.use_deterministic_algorithms(True)
    nets = {"trained": tiny_net(seed=0), "untrained": tiny_net(seed=1)}
    per_network, steps = {}, {}
    for label, net in nets.items():
        steps[label] = Steps.from_rollouts(rollouts(net, seed=len(steps)), CFG.max_steps)
        analysis = NetworkAnalysis(net, steps[label], CFG, EnvConfig(), SceneConfig(), seed=0, label=label)
        analysis.run()
        if label == "trained":
            analysis.randomisation(nets["untrained"])
        per_network[label] = analysis.tables
    return nets, steps, summarize(combine(per_network), list(nets))


def test_summary_has_every_network_and_the_cuts_of_this_networks_output_mlp(study):
    _, steps, summary = study
    assert list(summary) == ["trained", "untrained", "sanity"]
    assert steps["trained"].records.tolist() == [0, 2, 4, 6, 8]
    # tiny_net has one hidden output layer: its cuts are the output MLP's input and that layer
    assert list(summary["trained"]["conductance_completeness"]) == ["hook_resid", "output_hook_post_0"]
    assert cut_key("output_layer.hook_post.1") == "output_hook_post_1"
    completeness = summary["trained"]["ig_completeness"]
    assert list(completeness) == ["others_zeroed", "typical_scene", "typical_scene_ego"]
    assert completeness["others_zeroed"]["q"]["n_steps"] == 3 * 5          # every action of every step


def test_shapley_efficiency_is_the_largest_gap_between_the_values_and_q_minus_q_of_the_ego_alone(study):
    nets, steps, summary = study
    for label, net in nets.items():
        s = steps[label]
        phi = shapley_vehicles(net, s.obs, s.action, CFG.shapley_samples, seed=0)
        with torch.no_grad():
            rows = torch.arange(len(s.obs))
            delta_q = net(s.obs)[rows, s.action] - net(ego_alone(s.obs))[rows, s.action]
        gap = (phi.double().sum(1) - delta_q.double()).abs()
        assert summary[label]["shapley_efficiency"]["max_abs_error"] == pytest.approx(float(gap.max()), abs=1e-7)


def test_agreement_and_deletion_area_match_a_direct_computation_from_the_shapley_values(study):
    nets, steps, summary = study
    net, s = nets["trained"], steps["trained"]
    phi = shapley_vehicles(net, s.obs, s.action, CFG.shapley_samples, seed=0).double().numpy()
    present = s.present.numpy().copy()
    present[:, 0] = False
    for h in range(s.attention.shape[1]):
        rhos, top1 = [], []
        for b in range(len(s.obs)):
            idx = np.nonzero(present[b])[0]
            if len(idx) >= CFG.min_vehicles:
                rhos.append(rank_correlation(s.attention[b, h, idx], np.abs(phi[b, idx])))
            top1.append(float(idx[np.argmax(s.attention[b, h, idx])] == idx[np.argmax(np.abs(phi[b, idx]))]))
        head = summary["trained"]["agreement"]["shapley"][f"head{h}"]
        assert head["spearman_mean"] == pytest.approx(np.mean(rhos), abs=1e-9)
        assert head["n_steps"] == len(rhos) and head["top1_rate"] == pytest.approx(np.mean(top1))

    areas = []
    with torch.no_grad():
        greedy = net(s.obs).argmax(1)
        for b in range(len(s.obs)):
            idx = np.nonzero(present[b])[0]
            order = idx[np.argsort(-np.abs(phi[b, idx]), kind="stable")]
            q = []
            for k in range(len(order) + 1):
                state = s.obs[b].clone()
                state[order[:k]] = 0.0
                q.append(float(net(state[None])[0, greedy[b]]))
            areas.append(np.trapezoid(q, np.arange(len(order) + 1) / len(order)))
    assert summary["trained"]["deletion_auc_q"]["shapley"] == pytest.approx(np.mean(areas), rel=1e-5)


def test_attention_facts_and_the_randomisation_check_match_a_direct_computation(study):
    nets, steps, summary = study
    s = steps["trained"]
    scene = SceneConfig()
    distance = scene_facts(s.obs.numpy(), EnvConfig(), scene.horizon, scene.collision_radius,
                           scene.min_ego_speed)["distance"]
    valid = np.isfinite(distance)
    for h in range(s.attention.shape[1]):
        pooled = summary["trained"]["attention_facts"][f"head{h}"]["distance"]["pooled"]
        assert pooled == pytest.approx(rank_correlation(s.attention[:, h][valid], distance[valid]), abs=1e-9)

    present = s.present.numpy()
    phi_t = shapley_vehicles(nets["trained"], s.obs, s.action, CFG.shapley_samples, seed=0).numpy()
    phi_u = shapley_vehicles(nets["untrained"], s.obs, s.action, CFG.shapley_samples, seed=0).numpy()
    median = np.median([rank_correlation(phi_t[b, present[b]], phi_u[b, present[b]]) for b in range(len(s.obs))])
    check = summary["sanity"]["shapley_ego_alone"]["vehicle"]
    assert check["median_spearman"] == pytest.approx(median, abs=1e-9)
    assert check["flagged"] == (median > CFG.sanity_threshold)
    assert set(summary["sanity"]) == {"ig_others_zeroed", "ig_typical_scene", "ig_typical_scene_ego",
                                      "shapley_ego_alone", "attention_head0", "attention_head1"}
    assert not math.isnan(summary["trained"]["ig_completeness"]["others_zeroed"]["q"]["fraction_within"])


def trained_shapley_and_distance(study):
    """The trained network's summary and steps, |Shapley| per vehicle [B, E] computed directly, each
    vehicle's distance [B, E] and the other vehicles present [B, E] (the ego's column False)."""
    nets, steps, summary = study
    net, s = nets["trained"], steps["trained"]
    phi = np.abs(shapley_vehicles(net, s.obs, s.action, CFG.shapley_samples, seed=0).double().numpy())
    scene = SceneConfig()
    distance = scene_facts(s.obs.numpy(), EnvConfig(), scene.horizon, scene.collision_radius,
                           scene.min_ego_speed)["distance"]
    present = s.present.numpy().copy()
    present[:, 0] = False
    return summary, s, phi, distance, present


def test_chance_level_and_naive_rankings_match_a_direct_computation_from_the_shapley_values(study):
    """The chance level of a top-1 match is 1 / (vehicles present) with continuous values; the nearest-first
    ranking's agreement is Spearman(−distance, |φ|) per step, averaged like attention's."""
    summary, s, phi, distance, present = trained_shapley_and_distance(study)
    rhos, top1, chance = [], [], []
    for b in range(len(s.obs)):
        idx = np.nonzero(present[b])[0]
        if len(idx) >= CFG.min_vehicles:
            rhos.append(rank_correlation(-distance[b, idx], phi[b, idx]))
        top1.append(float(idx[np.argmin(distance[b, idx])] == idx[np.argmax(phi[b, idx])]))
        chance.append(1.0 / len(idx))
    nearest = summary["trained"]["ranking_baselines"]["shapley"]["nearest"]
    assert nearest["spearman_mean"] == pytest.approx(np.mean(rhos), abs=1e-9) and nearest["n_steps"] == len(rhos)
    assert nearest["top1_rate"] == pytest.approx(np.mean(top1))
    assert nearest["top1_chance"] == pytest.approx(np.mean(chance))
    for h in range(s.attention.shape[1]):
        assert summary["trained"]["agreement"]["shapley"][f"head{h}"]["top1_chance"] == pytest.approx(np.mean(chance))
    assert set(summary["trained"]["ranking_baselines"]) == {"ig", "shapley"}
    assert set(summary["untrained"]["ranking_baselines"]["ig"]) == {"nearest", "lowest_ttc"}


def test_attention_minus_the_nearest_ranking_is_paired_over_the_same_steps(study):
    """The per-step Spearman of attention with |φ| minus the nearest-first ranking's, on the steps both
    are defined, averaged; its top-1 match minus the step's chance level likewise."""
    summary, s, phi, distance, present = trained_shapley_and_distance(study)
    for h in range(s.attention.shape[1]):
        diffs, top1 = [], []
        for b in range(len(s.obs)):
            idx = np.nonzero(present[b])[0]
            if len(idx) >= CFG.min_vehicles:
                diffs.append(rank_correlation(s.attention[b, h, idx], phi[b, idx])
                             - rank_correlation(-distance[b, idx], phi[b, idx]))
            top1.append(float(idx[np.argmax(s.attention[b, h, idx])] == idx[np.argmax(phi[b, idx])]) - 1 / len(idx))
        versus = summary["trained"]["attention_vs_rankings"]["shapley"][f"head{h}"]
        assert versus["nearest"]["diff"] == pytest.approx(np.mean(diffs), abs=1e-9)
        assert versus["nearest"]["n_steps"] == len(diffs)
        assert versus["nearest"]["ci_low"] <= versus["nearest"]["diff"] <= versus["nearest"]["ci_high"]
        assert versus["chance"]["diff"] == pytest.approx(np.mean(top1), abs=1e-9)
        assert set(versus) == {"nearest", "lowest_ttc", "chance"}
    assert set(summary["trained"]["deletion_vs_random"]) == {"ig_others_zeroed", "shapley"}


def test_paired_over_steps_on_hand_tables():
    # three analysed steps of two episodes; the control has two random orders per step, averaged first
    treated = pd.DataFrame({"record": [0, 1, 2], "episode": [0, 0, 1], "v": [1.0, 2.0, 4.0]})
    control = pd.DataFrame({"record": [0, 0, 1, 1, 2, 2, 3], "episode": [0, 0, 0, 0, 1, 1, 1],
                            "v": [0.0, 1.0, 1.0, 1.0, 1.0, 2.0, 9.0]})
    out = paired_over_steps(treated, control, "v", 400, 0)
    # differences 0.5, 1, 2.5 (record 3 has no treated row); resampling the two episodes:
    # episode 0 twice -> 0.75, episode 1 twice -> 2.5, both -> 4/3
    assert out["diff"] == pytest.approx(4 / 3) and out["n_steps"] == 3
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((0.75, 2.5))
    # a NaN on either side drops the step; another column of the control can be compared
    treated.loc[1, "v"] = np.nan
    control["chance"] = 0.5
    assert paired_over_steps(treated, control, "v", 100, 0, control_value="chance")["n_steps"] == 2
    empty = paired_over_steps(treated.iloc[:0], control, "v", 100, 0)
    assert empty["n_steps"] == 0 and math.isnan(empty["diff"])
