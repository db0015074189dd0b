"""The designed-scenes study: a hand-made network that brakes exactly below a gap threshold is recovered
by the sweep; per-head attention and mean/zero ablation against a hand computation; the summary's
agreement and switch points on a hand-made table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from egolens.analysis.intervening import scene_study
from egolens.analysis.intervening.designed_scenes import arrival_times_for_gaps
from egolens.config import EnvConfig, ScenesConfig
from tests.conftest import random_obs, tiny_net
from tests.intervention_nets import d, q_from_resid, w_o
from tests.test_designed_scenes import CONFLICT_X, BrakeBelowThreshold

CFG = EnvConfig()


def gap_threshold_net(cfg: ScenesConfig, threshold: float) -> BrakeBelowThreshold:
    """Brakes (Q(SLOWER) > Q(FASTER) = 0 > Q(IDLE)) exactly when the o1-o3 vehicle's gap is below `threshold`:
    its arrival time is gap + the ego's time to the conflict point."""
    (ego_time,) = arrival_times_for_gaps(CFG, scene_study.route_spec(cfg, "o1-o3", False), [0.0])
    return BrakeBelowThreshold(CONFLICT_X, threshold + float(ego_time))


def test_the_scene_sweep_recovers_a_hand_made_braking_threshold():
    """The issue's test: the switch point of the sweep is the network's threshold (its brake margin is
    linear in the gap, so the interpolated zero crossing is exact, not only bracketed)."""
    cfg = ScenesConfig(gap_start=-1.0, gap_stop=3.0, gap_step=0.5, routes=["o1-o3"])
    threshold = 1.3
    scenes, heads = scene_study.run_scenes(CFG, cfg, {"hand": gap_threshold_net(cfg, threshold)}, clairvoyant=False)
    assert heads.empty                                   # no attention layer, no per-head rows
    assert scenes["gap"].tolist() == cfg.gaps and scenes["observed"].all()
    assert scenes["brakes"].tolist() == [g < threshold for g in cfg.gaps]
    assert scenes["brake_margin"].to_numpy() == pytest.approx(threshold - np.array(cfg.gaps), abs=1e-3)
    switches = scene_study.brake_switches(scenes["gap"].to_numpy(), scenes["brake_margin"].to_numpy())
    assert switches[["before", "after", "direction"]].values.tolist() == [[1.0, 1.5, "brake_to_go"]]
    assert switches["gap"].iloc[0] == pytest.approx(threshold, abs=1e-3)


def test_switches_and_goes_from_on_a_hand_made_margin():
    gaps = np.array([-1.0, 0.0, 1.0, 2.0, 3.0])
    margin = np.array([-1.0, 1.0, 3.0, -1.0, -2.0])       # go, brake, brake, go, go
    switches = scene_study.brake_switches(gaps, margin)
    assert switches["direction"].tolist() == ["go_to_brake", "brake_to_go"]
    assert switches["gap"].tolist() == pytest.approx([-0.5, 1.75])
    assert scene_study.goes_from(gaps, margin < 0) == 2.0
    assert scene_study.goes_from(gaps, np.array([True] * 5)) == -1.0
    assert math.isnan(scene_study.goes_from(gaps, np.array([True, True, True, True, False])))


def test_sweep_summary_counts_agreement_with_the_planner_and_with_going_now():
    sweep = pd.DataFrame({
        "gap": [2.0, 0.0, -1.0, 1.0, 3.0],
        "brakes": [False, True, False, True, False],
        "brake_margin": [-1.0, 1.0, -1.0, 1.0, -2.0],
        "clairvoyant_action": ["FASTER", "SLOWER", "FASTER", "FASTER", "FASTER"],
        "go_outcome": ["arrived", "collision", "arrived", "collision", "arrived"],
    })
    summary = scene_study.sweep_summary(sweep)
    assert summary["brake_rate"] == pytest.approx(0.4)
    assert summary["planner_agreement"] == pytest.approx(0.8)       # all but gap 1 (brakes, planner goes)
    assert summary["go_safety_agreement"] == pytest.approx(1.0)
    assert summary["switch_gap"] == pytest.approx(1.5) and summary["n_switches"] == 2
    assert summary["goes_from_gap"] == 2.0 and summary["safe_from_gap"] == 2.0
    assert summary["planner_goes_from_gap"] == 1.0


def hand_z(net, obs: torch.Tensor) -> torch.Tensor:
    """Each head's attention-weighted value [S, H, d], computed from the weights loop by loop."""
    sd = {k: v.detach() for k, v in net.state_dict().items()}

    def embed(prefix: str, x: torch.Tensor) -> torch.Tensor:
        for i in range(2):
            x = torch.relu(sd[f"{prefix}.layers.{i}.weight"] @ x + sd[f"{prefix}.layers.{i}.bias"])
        return x

    out = torch.zeros(obs.shape[0], 2, d)
    for s in range(obs.shape[0]):
        entities = [embed("ego_embedding", obs[s, 0])] + [embed("others_embedding", x) for x in obs[s, 1:]]
        q = sd["attention_layer.query_ego.weight"] @ entities[0]
        for h in range(2):
            rows = slice(h * d, (h + 1) * d)
            keys = [sd["attention_layer.key_all.weight"][rows] @ e for e in entities]
            present = [j == 0 or obs[s, j, 0] >= 0.5 for j in range(len(entities))]
            scores = torch.tensor([float(q[rows] @ k) / math.sqrt(d) if p else -math.inf
                                   for k, p in zip(keys, present)])
            weights = torch.softmax(scores, dim=0)
            out[s, h] = sum(w * (sd["attention_layer.value_all.weight"][rows] @ e) for w, e in zip(weights, entities))
    return out


def test_head_ablation_effects_match_a_hand_computation():
    """Ablating head h moves the output-MLP input by ½·W_O^h (replacement − z_h); replacement = the mean of
    z_h over the sweep's scenes, or 0."""
    net = tiny_net(heads=2, seed=5)
    obs = random_obs(6, entities=5, seed=2)
    rows = [1, 2, -1, 1, 3, 4]
    table = scene_study.head_table(net, obs, rows, roles={0: "head_rank2", 1: "head_rank1"})
    z = hand_z(net, obs)
    with torch.no_grad():
        pattern = net.get_attention_matrix(obs)[:, :, 0]
        resid, _ = net.forward_attention(obs)
        q = net(obs)
    m = q[:, 0] - q[:, 2]
    for h, role in ((0, "head_rank2"), (1, "head_rank1")):
        for ablation, replacement in (("mean_over_sweep", z[:, h].mean(0)), ("zero", torch.zeros(d))):
            ablated = resid + 0.5 * (replacement - z[:, h]) @ w_o(net, h).T
            q_ablated = q_from_resid(net, obs, ablated)
            rows_h = table[(table["head"] == h) & (table["ablation"] == ablation)].sort_values("scene")
            assert (rows_h["head_role"] == role).all()
            assert rows_h["m"].to_numpy() == pytest.approx(m.numpy(), abs=1e-5)
            assert rows_h["effect"].to_numpy() == pytest.approx((q_ablated[:, 0] - q_ablated[:, 2] - m).numpy(),
                                                               abs=1e-5)
            brakes = q.argmax(1) == 0
            assert rows_h["flips"].tolist() == ((q_ablated.argmax(1) == 0) != brakes).tolist()
            expected = [float(pattern[s, h, r]) if r >= 0 else math.nan for s, r in enumerate(rows)]
            assert rows_h["attention"].to_numpy() == pytest.approx(np.array(expected), abs=1e-6, nan_ok=True)


def test_an_unplaceable_gap_grid_fails_naming_the_key():
    with pytest.raises(ValueError, match=r"scenes.gap_start = -30.0 cannot be placed on route o1-o3"):
        scene_study.check_placeable(CFG, ScenesConfig(gap_start=-30.0, gap_stop=1.0, gap_step=0.5, routes=["o1-o3"]))


@pytest.mark.slow
def test_the_study_on_a_tiny_network_summarises_every_sweep_and_head():
    cfg = ScenesConfig(gap_start=-1.0, gap_stop=1.0, gap_step=1.0, routes=["o1-o3"])
    nets = {"trained": tiny_net(heads=2, seed=1), "untrained": tiny_net(heads=2, seed=2)}
    scenes, heads = scene_study.run_scenes(CFG, cfg, nets, roles={0: "head_rank1", 1: "head_rank2"})
    assert len(scenes) == 6 and len(heads) == 3 * 2 * 2 * 2
    assert scenes.loc[scenes["gap"] == 0.0, "go_outcome"].eq("collision").all()
    summary = scene_study.summarize(scenes, heads)
    assert set(summary) == {"trained", "untrained"}
    assert set(summary["trained"]["o1-o3"]["heads"]) == {"head_rank1", "head_rank2"}
    assert set(scene_study.metrics(summary)["o1-o3"]) == set(scene_study.METRICS)
    again, _ = scene_study.run_scenes(CFG, cfg, nets, roles={0: "head_rank1", 1: "head_rank2"})
    pd.testing.assert_frame_equal(scenes, again)
