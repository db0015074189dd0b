"""The interventions stage's experiment: summary.json from hand-made tables against a hand
computation, and every table of a run on a tiny network and toy envs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from egolens.analysis.intervening import intervention_study as study
from egolens.analysis.intervening import interventions as iv
from egolens.analysis_config import InterventionsConfig
from egolens.hooks import run_with_cache
from egolens.sites import COMBINED, PATTERN, RESID, Z, neuron_layers
from egolens.vocabulary import present_others
from tests.conftest import random_obs, tiny_net, toy_runner

LAYER = "output_layer.hook_post.0"


def closed_rows(condition: str, kind: str, success: float, collision: float) -> list[dict]:
    """closed_loop.csv rows of one condition: diffs as given, CIs ±1/8, the control a fixed baseline."""
    rows = []
    for metric, value, diff in (("success", 0.75, success), ("collision", 0.25, collision), ("timeout", 0.0, 0.0)):
        rows.append({"condition": condition, "kind": kind, "metric": metric, "value": value + diff, "control": value,
                     "diff": diff, "diff_ci_low": diff - 0.125, "diff_ci_high": diff + 0.125, "episodes": 4})
    return rows


def hand_made_tables() -> study.Tables:
    closed = [("none", "none", 0.0, 0.0),
              ("head0_zero", "head", -0.25, 0.25), ("head1_zero", "head", -0.5, 0.0),      # head 1 matters more
              ("head0_mean", "head", 0.25, -0.25), ("head1_mean", "head", 0.25, 0.0),      # a tie: head 0
              ("branch_zero", "branch", -0.75, 0.0), ("branch_mean", "branch", 0.0, 0.5),
              (f"neurons_{LAYER}_top", "neurons", -0.5, 0.25), (f"neurons_{LAYER}_random0", "neurons", 0.0, 0.25),
              (f"neurons_{LAYER}_random1", "neurons", -0.25, 0.0),
              ("vehicle_most_attended", "vehicle", 0.0, 0.5), ("vehicle_random", "vehicle", 0.0, 0.0)]
    open_loop = pd.DataFrame([
        {"condition": name, "target": target, "mode": mode, "flip_rate": flip, "abs_dq": dq}
        for name, target, mode, flip, dq in [
            ("none", "", "", 0.0, 0.0), ("head0_zero", "head0", "zero", 0.125, 0.5),
            ("head1_zero", "head1", "zero", 0.375, 1.0), ("head0_mean", "head0", "mean", 0.0625, 0.25),
            ("head1_mean", "head1", "mean", 0.25, 0.5), ("branch_zero", "attention_branch", "zero", 0.875, 2.0),
            ("branch_mean", "attention_branch", "mean", 0.25, 0.75),
            (f"neurons_{LAYER}_top", LAYER, "top", 0.5, 0.25),
            (f"neurons_{LAYER}_random0", LAYER, "random0", 0.125, 0.0625),
            (f"neurons_{LAYER}_random1", LAYER, "random1", 0.375, 0.125),
            ("vehicle_most_attended", "most_attended", "remove", 0.5, 0.625),
            ("vehicle_random", "random", "remove", 0.25, 0.125)]])
    act = pd.DataFrame([
        {"kind": kind, "pair": pair, "entity_present": present, "site_class": cls, "role": role, "site": site,
         "neuron": neuron, "restored": restored}
        for kind, pair, present, cls, role, site, neuron, restored in [
            ("ego_slower", 0, True, "resid", "all", RESID, -1, 1.0),
            ("ego_slower", 1, True, "resid", "all", RESID, -1, 0.5),
            ("ego_slower", 0, True, "embedding", "target", "others_embedding.hook_post.1", -1, 0.75),
            ("ego_slower", 1, False, "embedding", "target", "others_embedding.hook_post.1", -1, 99.0),  # absent: out
            ("ego_slower", 0, True, "embedding", "other", "others_embedding.hook_post.1", -1, 0.25),
            ("ego_slower", 0, True, "neuron", "all", LAYER, 0, 0.125),
            ("ego_slower", 1, True, "neuron", "all", LAYER, 0, 0.375),
            ("ego_slower", 0, True, "neuron", "all", LAYER, 1, 0.5),
            ("ego_slower", 1, True, "neuron", "all", LAYER, 1, 0.25),
            ("vehicle_removed", 3, True, "resid", "all", RESID, -1, 0.375)]])
    path = pd.DataFrame([{"kind": "vehicle_closer", "head": h, "path": p, "restored": r} for h, p, r in [
        (0, "key", 0.25), (0, "key", 0.5), (1, "value", 1.0), (-1, "sender", 0.875)]])
    perturb = pd.DataFrame([{"layer": layer, "direction": direction, "size": size, "mean_abs_dq": dq, "flip_rate": flip}
                            for layer, direction, size, dq, flip in [
                                (LAYER, "uniform", 0.1, 0.75, 0.0625), (LAYER, "uniform", -0.1, 5.0, 5.0),
                                (LAYER, "pc1", 0.1, 5.0, 5.0), (RESID, "uniform", 0.1, 0.875, 0.125)]])
    editing = pd.DataFrame([{"edit": "edit_head_scale", "goal": "g", "measure": "head", "value": 1},
                            {"edit": "edit_head_scale", "goal": "g", "measure": "side_flip_rate", "value": 0.125},
                            {"edit": "edit_head_scale", "goal": "g", "measure": "closed_success_diff", "value": -0.25,
                             "ci_low": -0.5, "ci_high": 0.0}],
                           columns=["edit", "goal", "measure", "value", "ci_low", "ci_high"])
    return study.Tables(open_loop=open_loop, closed_loop=pd.DataFrame([r for c in closed for r in closed_rows(*c)]),
                        closed_loop_episodes=pd.DataFrame(), patching=act, path_patching=path, perturbation=perturb,
                        editing=editing)


def test_summary_of_hand_made_tables_matches_a_hand_computation():
    summary = study.summarize(hand_made_tables(), heads=2, neuron_layers=[LAYER], notebook_size=0.1)

    def diffs(success, collision):
        return {"success_diff": success, "success_diff_ci_low": success - 0.125,
                "success_diff_ci_high": success + 0.125, "collision_diff": collision,
                "collision_diff_ci_low": collision - 0.125, "collision_diff_ci_high": collision + 0.125}

    expected = {
        "closed_loop_baseline": {"success_rate": 0.75, "collision_rate": 0.25, "timeout_rate": 0.0, "episodes": 4},
        "head_ablation": {"zero": {"head": 1, **diffs(-0.5, 0.0), "flip_rate": 0.375},
                          "mean": {"head": 0, **diffs(0.25, -0.25), "flip_rate": 0.0625}},
        "branch_ablation": {"zero": {**diffs(-0.75, 0.0), "flip_rate": 0.875},
                            "mean": {**diffs(0.0, 0.5), "flip_rate": 0.25}},
        "neuron_ablation": {"output_layer_hook_post_0": {
            "top_flip_rate": 0.5, "random_flip_rate": (0.125 + 0.375) / 2, "top_abs_dq": 0.25,
            "random_abs_dq": (0.0625 + 0.125) / 2, "top_success_diff": -0.5, "random_success_diff": (0.0 - 0.25) / 2,
            "top_collision_diff": 0.25, "random_collision_diff": (0.25 + 0.0) / 2}},
        "vehicle_removal": {"most_attended": {**diffs(0.0, 0.5), "flip_rate": 0.5, "abs_dq": 0.625},
                            "random": {**diffs(0.0, 0.0), "flip_rate": 0.25, "abs_dq": 0.125}},
        "patching_restored": {
            "ego_slower": {"pairs": 2, "embedding_other": 0.25, "embedding_target": 0.75,
                           "neuron": (0.125 + 0.375 + 0.5 + 0.25) / 4, "resid": (1.0 + 0.5) / 2,
                           "neuron_max": max((0.125 + 0.375) / 2, (0.5 + 0.25) / 2)},
            "vehicle_removed": {"pairs": 1, "resid": 0.375}},
        "path_patching_restored": {"vehicle_closer": {"sender": 0.875, "head0_key": (0.25 + 0.5) / 2,
                                                      "head1_value": 1.0}},
        "perturbation_notebook": {"output_layer_hook_post_0": {"abs_dq": 0.75, "flip_rate": 0.0625},
                                  "attention_layer_hook_resid": {"abs_dq": 0.875, "flip_rate": 0.125}},
        "editing": {"edit_head_scale": {"head": 1, "side_flip_rate": 0.125, "closed_success_diff": -0.25,
                                        "closed_success_diff_ci_low": -0.5, "closed_success_diff_ci_high": 0.0}},
    }
    assert summary == expected                       # every value a power-of-two fraction: exact
    assert list(summary) == list(expected)           # summary.json's order of sections
    assert list(summary["patching_restored"]["ego_slower"]) == ["pairs", "embedding_other", "embedding_target",
                                                                "neuron", "resid", "neuron_max"]
    # another reported perturbation size picks other rows
    other = study.summarize(hand_made_tables(), heads=2, neuron_layers=[LAYER], notebook_size=0.2)
    assert other["perturbation_notebook"] == {}


def test_most_affecting_head_takes_the_larger_of_both_changes_and_the_lower_head_on_ties():
    closed = pd.DataFrame([r for c in [("head0_zero", "head", 0.0, 0.25), ("head1_zero", "head", -0.25, 0.0),
                                       ("head2_zero", "head", 0.125, -0.5)] for r in closed_rows(*c)])
    assert study.most_affecting_head(closed, 3, "zero")[0] == 2
    assert study.most_affecting_head(closed, 2, "zero")[0] == 0


def test_the_reported_perturbation_size_must_be_one_of_the_swept_sizes():
    assert InterventionsConfig(perturbation_sizes=[-0.5, 0.5], notebook_size=0.5).notebook_size == 0.5
    with pytest.raises(ValueError, match="notebook_size = 0.1 is not one of"):
        InterventionsConfig(perturbation_sizes=[-0.5, 0.5])


def test_rank_one_brake_uses_the_configured_margin_and_gives_up_when_every_step_brakes():
    net = tiny_net(heads=2)
    obs = random_obs(10, seed=22)
    facts = {"ttc": np.tile(np.linspace(9, 1, 10)[:, None], (1, 15)), "distance": np.full((10, 15), 20.0)}
    with torch.no_grad():
        net.output_layer.predict.bias[iv.SLOWER] -= 10.0                       # no step brakes
    brake = study.rank_one_brake(net, obs, facts, InterventionsConfig(edit_margin=0.25))
    assert brake is not None and brake.step == 9 and brake.source == -1         # the smallest time to collision
    with torch.no_grad():
        q0, q1 = net(obs[9:10])[0], brake.net(obs[9:10])[0]
    torch.testing.assert_close(q1[iv.SLOWER], q0.max() + 0.25, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        net.output_layer.predict.bias[iv.SLOWER] += 100.0                      # every step brakes
    with pytest.warns(UserWarning, match="no rank-one edit"):
        assert study.rank_one_brake(net, obs, facts, InterventionsConfig()) is None


@pytest.fixture
def recorded():
    """A tiny net and a 'recorded rollout' of 12 steps with 4 entities (the toy env's size)."""
    net = tiny_net(heads=2).eval()
    obs = random_obs(12, entities=4, seed=21, absent_fraction=0.3)
    obs[:, 1, 0] = 1.0                                                      # every step has a vehicle
    names = [Z, COMBINED, RESID, PATTERN, *neuron_layers(net)]
    _, cache = run_with_cache(net, obs, names)
    arrays = {name: cache[name].numpy() for name in names if name != PATTERN}
    arrays |= {"obs": obs.numpy(), "attention": cache[PATTERN][:, :, 0].numpy()}
    rng = np.random.default_rng(0)
    crossing = present_others(obs).numpy()
    facts = {"crossing": crossing, "ttc": np.where(crossing, rng.uniform(1, 9, crossing.shape), np.inf),
             "distance": np.where(present_others(obs).numpy(), rng.uniform(5, 50, crossing.shape), np.nan)}
    return net, arrays, facts


def test_run_interventions_on_a_tiny_network_and_toy_envs(recorded):
    net, arrays, facts = recorded
    cfg = InterventionsConfig(closed_loop_episodes=3, top_k=2, random_sets=1, patch_pairs=2, random_directions=1,
                              perturbation_sizes=[-0.1, 0.1], bootstrap_resamples=100)
    ranking = pd.concat([pd.DataFrame({"layer": layer, "neuron": [3, 0, 1, 2, 4, 5, 6, 7], "rank": range(8)})
                         for layer in neuron_layers(net)])
    with toy_runner(1) as runner:
        tables = study.run_interventions(net, arrays, facts, ranking, cfg, runner, seed=0)
    assert list(tables.files()) == ["open_loop.csv", "closed_loop.csv", "closed_loop_episodes.csv", "patching.csv",
                                    "path_patching.csv", "perturbation.csv", "editing.csv"]
    layers = neuron_layers(net)
    names = list(tables.open_loop["condition"])
    assert names[:7] == ["none", "head0_zero", "head0_mean", "head1_zero", "head1_mean", "branch_zero", "branch_mean"]
    assert len(names) == 7 + 2 * len(layers) + 2 + 2 and names[-2:] == ["edit_rank_one", "edit_head_scale"]
    assert list(tables.closed_loop["condition"].unique()) == names
    tops = tables.closed_loop[tables.closed_loop["mode"] == "top"].drop_duplicates("condition")
    assert set(tops["units"]) == {"3 0"}                             # the ranking's best two, in rank order
    assert len(tables.closed_loop_episodes) == 3 * len(names)
    none = tables.closed_loop[tables.closed_loop.condition == "none"]
    assert (none["diff"] == 0).all() and (none["episodes"] == 3).all()        # the control against itself
    head, _ = study.most_affecting_head(tables.closed_loop, 2, "zero")
    assert tables.open_loop.iloc[-1]["target"] == f"head{head}"
    # the head-scaling edit is compared with the unablated agent's episodes, not with itself
    scaled = tables.closed_loop[tables.closed_loop.condition == "edit_head_scale"].set_index("metric")
    assert scaled.loc["success", "control"] == none.set_index("metric").loc["success", "value"]
    assert set(tables.perturbation["layer"]) == {*layers, RESID}
    assert set(tables.editing["edit"]) == {"edit_rank_one", "edit_head_scale"}
    brakes = tables.editing[(tables.editing.edit == "edit_rank_one") & (tables.editing.measure == "target_brakes")]
    assert brakes["value"].tolist() == [1]
    summary = study.summarize(tables, 2, layers, cfg.notebook_size)
    assert summary["closed_loop_baseline"]["episodes"] == 3 and summary["head_ablation"]["zero"]["head"] == head
    assert set(summary["perturbation_notebook"]) == {name.replace(".", "_") for name in [*layers, RESID]}
