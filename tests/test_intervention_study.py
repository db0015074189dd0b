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


def closed_rows(condition: str, kind: str, success: float, collision: float, half: str = "all",
                actions: tuple[float, float, float] = (0.25, 0.5, 0.25)) -> list[dict]:
    """closed_loop.csv rows of one condition on one half: diffs as given, CIs ±1/8, the control a
    fixed baseline; action shares as given (the control's 0.25, 0.5, 0.25)."""
    rows = []
    for metric, value, diff in (("success", 0.75, success), ("collision", 0.25, collision), ("timeout", 0.0, 0.0)):
        rows.append({"condition": condition, "kind": kind, "half": half, "metric": metric, "value": value + diff,
                     "control": value, "diff": diff, "diff_ci_low": diff - 0.125, "diff_ci_high": diff + 0.125,
                     "episodes": 4})
    for metric, share, base in zip(study.ACTION_METRICS, actions, (0.25, 0.5, 0.25)):
        rows.append({"condition": condition, "kind": kind, "half": half, "metric": metric, "value": share,
                     "control": base, "diff": share - base, "episodes": 4})
    return rows


HEADS = {  # condition: (rank-half success, collision diffs), (measure-half diffs), measure-half action shares
    "head0_zero": ((-0.25, 0.25), (-0.25, 0.0), (0.25, 0.5, 0.25)),
    "head1_zero": ((-0.5, 0.0), (-0.125, 0.0), (1.0, 0.0, 0.0)),       # head 1 chosen; on held-out it just stops
    "head0_mean": ((0.25, -0.25), (0.0, 0.0), (0.5, 0.5, 0.0)),
    "head1_mean": ((0.25, 0.0), (0.5, 0.5), (0.25, 0.5, 0.25)),          # a tie on the rank half: head 0
    "head0_resample": ((0.0, 0.0), (0.0, 0.0), (0.25, 0.5, 0.25)),
    "head1_resample": ((0.0, 0.125), (-0.25, 0.0), (0.5, 0.25, 0.25)),
}


def closed_table() -> pd.DataFrame:
    """closed_loop.csv of the hand-made tables: every condition on all episodes, heads also per half."""
    closed = [("none", "none", 0.0, 0.0),
              ("head0_zero", "head", -0.25, 0.25), ("head1_zero", "head", -0.5, 0.0),
              ("head0_mean", "head", 0.25, -0.25), ("head1_mean", "head", 0.25, 0.0),
              ("head0_resample", "head", 0.0, 0.0), ("head1_resample", "head", 0.0, 0.0),
              ("branch_zero", "branch", -0.75, 0.0), ("branch_mean", "branch", 0.0, 0.5),
              ("branch_resample", "branch", 0.0, 0.25),
              (f"neurons_{LAYER}_top", "neurons", -0.5, 0.25), (f"neurons_{LAYER}_random0", "neurons", 0.0, 0.25),
              (f"neurons_{LAYER}_random1", "neurons", -0.25, 0.0),
              ("vehicle_most_attended", "vehicle", 0.0, 0.5), ("vehicle_random", "vehicle", 0.0, 0.0)]
    rows = [r for c in closed for r in closed_rows(*c)]
    for condition, (rank, measure, actions) in HEADS.items():
        rows += closed_rows(condition, "head", *rank, half="rank") + closed_rows(condition, "head", *measure,
                                                                                  half="measure", actions=actions)
    return pd.DataFrame(rows)


EPISODES = 60
"""Closed-loop episodes of the hand-made episode table: 30 to rank on, 30 to measure on (30 resolve a
margin of 0.1: 1 − 0.05^(1/30) = 0.095)."""


def episodes_table(episodes: int = EPISODES) -> pd.DataFrame:
    """closed_loop_episodes.csv of the hand-made tables: the first half of the env seeds to rank on,
    the second to measure on; every condition equals the control except head1_zero (every other
    measure-half episode loses its success), the vehicle removals (most attended: every episode
    collides) and the rank-one edit (no change)."""
    rows = []
    for condition in ["none", *HEADS, "vehicle_most_attended", "vehicle_random", "edit_rank_one"]:
        for i in range(episodes):
            half = "rank" if i < episodes // 2 else "measure"
            success = 0.0 if condition == "head1_zero" and half == "measure" and i % 2 else 1.0
            collision = 1.0 if condition == "vehicle_most_attended" else 0.0
            rows.append({"condition": condition, "half": half, "env_seed": 100 + i, "success": success,
                         "collision": collision})
    return pd.DataFrame(rows)


def hand_made_tables() -> study.Tables:
    open_loop = pd.DataFrame([
        {"condition": name, "target": target, "mode": mode, "flip_rate": flip, "abs_dq": dq,
         **dict(zip(["abs_dq_vs_random", "abs_dq_vs_random_ci_low", "abs_dq_vs_random_ci_high"], contrast))}
        for name, target, mode, flip, dq, *contrast in [
            ("none", "", "", 0.0, 0.0), ("head0_zero", "head0", "zero", 0.125, 0.5),
            ("head1_zero", "head1", "zero", 0.375, 1.0), ("head0_mean", "head0", "mean", 0.0625, 0.25),
            ("head1_mean", "head1", "mean", 0.25, 0.5), ("head0_resample", "head0", "resample", 0.0, 0.0),
            ("head1_resample", "head1", "resample", 0.125, 0.25),
            ("branch_zero", "attention_branch", "zero", 0.875, 2.0),
            ("branch_mean", "attention_branch", "mean", 0.25, 0.75),
            ("branch_resample", "attention_branch", "resample", 0.125, 0.5),
            (f"neurons_{LAYER}_top", LAYER, "top", 0.5, 0.25, 0.125, 0.0, 0.25),
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
    editing = pd.DataFrame([{"edit": "edit_rank_one", "goal": "g", "measure": "target_brakes", "value": 1},
                            {"edit": "edit_head_scale", "goal": "g", "measure": "head", "value": 1},
                            {"edit": "edit_head_scale", "goal": "g", "measure": "side_flip_rate", "value": 0.125},
                            {"edit": "edit_head_scale", "goal": "g", "measure": "closed_success_diff", "value": -0.25,
                             "ci_low": -0.5, "ci_high": 0.0}],
                           columns=["edit", "goal", "measure", "value", "ci_low", "ci_high"])
    return study.Tables(open_loop=open_loop, closed_loop=closed_table(), closed_loop_episodes=episodes_table(),
                        patching=act, path_patching=path, perturbation=perturb,
                        editing=editing)


def test_summary_of_hand_made_tables_matches_a_hand_computation():
    summary = study.summarize(hand_made_tables(), heads=2, neuron_layers=[LAYER], notebook_size=0.1, margin=0.1,
                              resamples=200, seed=0)

    def diffs(success, collision):
        return {"success_diff": success, "success_diff_ci_low": success - 0.125,
                "success_diff_ci_high": success + 0.125, "collision_diff": collision,
                "collision_diff_ci_low": collision - 0.125, "collision_diff_ci_high": collision + 0.125}

    def actions(slower, idle, faster):
        return {"action_slower": slower, "action_idle": idle, "action_faster": faster}

    def chosen(head, measured, in_sample, shares, flip):
        return {"head": head, **diffs(*measured), "in_sample_success_diff": in_sample[0],
                "in_sample_collision_diff": in_sample[1], **actions(*shares), "flip_rate": flip}

    no_effect = summary.pop("head_no_effect")
    expected = {
        "closed_loop_baseline": {"success_rate": 0.75, "collision_rate": 0.25, "timeout_rate": 0.0,
                                 **actions(0.25, 0.5, 0.25), "episodes": 4},
        # chosen on the rank half, reported on the measure half
        "head_ablation": {"zero": chosen(1, (-0.125, 0.0), (-0.5, 0.0), (1.0, 0.0, 0.0), 0.375),
                          "mean": chosen(0, (0.0, 0.0), (0.25, -0.25), (0.5, 0.5, 0.0), 0.0625),
                          "resample": chosen(1, (-0.25, 0.0), (0.0, 0.125), (0.5, 0.25, 0.25), 0.125)},
        "branch_ablation": {"zero": {**diffs(-0.75, 0.0), **actions(0.25, 0.5, 0.25), "flip_rate": 0.875},
                            "mean": {**diffs(0.0, 0.5), **actions(0.25, 0.5, 0.25), "flip_rate": 0.25},
                            "resample": {**diffs(0.0, 0.25), **actions(0.25, 0.5, 0.25), "flip_rate": 0.125}},
        "neuron_ablation": {"output_layer_hook_post_0": {
            "top_flip_rate": 0.5, "random_flip_rate": (0.125 + 0.375) / 2, "top_abs_dq": 0.25,
            "random_abs_dq": (0.0625 + 0.125) / 2, "top_minus_random_abs_dq": 0.125,
            "top_minus_random_abs_dq_ci_low": 0.0, "top_minus_random_abs_dq_ci_high": 0.25,
            "top_success_diff": -0.5, "random_success_diff": (0.0 - 0.25) / 2,
            "top_collision_diff": 0.25, "random_collision_diff": (0.25 + 0.0) / 2}},
        "vehicle_removal": {"most_attended": {**diffs(0.0, 0.5), "flip_rate": 0.5, "abs_dq": 0.625},
                            "random": {**diffs(0.0, 0.0), "flip_rate": 0.25, "abs_dq": 0.125},
                            # every episode collides with the most attended vehicle removed, none with a random one
                            "most_attended_vs_random": {"collision_diff": 1.0, "collision_diff_ci_low": 1.0,
                                                        "collision_diff_ci_high": 1.0}},
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
                                        "closed_success_diff_ci_low": -0.5, "closed_success_diff_ci_high": 0.0},
                    # the edit changes no episode: equivalent to no effect within the margin
                    "edit_rank_one": {"target_brakes": 1, "collision_no_effect": {
                        "diff": 0.0, "tost_ci_low": 0.0, "tost_ci_high": 0.0, "margin": 0.1, "equivalent": 1,
                        "non_inferior": 1, "detectable_effect": 0.0, "resolution": 1 - 0.05 ** (1 / EPISODES),
                        "resolved": 1, "episodes": EPISODES}}},
    }
    assert summary == expected                       # every value a power-of-two fraction: exact
    assert list(summary) == list(expected)           # summary.json's order of sections
    assert list(summary["patching_restored"]["ego_slower"]) == ["pairs", "embedding_other", "embedding_target",
                                                                "neuron", "resid", "neuron_max"]
    # no effect: the heads that change no measure-half episode pass, head1_zero (a success lost in
    # every other episode: mean −0.5, detectable effect (z_.975 + z_.8)·sd/√n) fails
    assert set(no_effect) == {"head0", "head1"} and all(set(m) == set(iv.MODES) for m in no_effect.values())
    for head, modes in no_effect.items():
        for mode, test in modes.items():
            lost = (head, mode) == ("head1", "zero")
            assert (test["equivalent"], test["non_inferior"]) == ((0, 0) if lost else (1, 1)), (head, mode)
            assert test["episodes"] == EPISODES // 2 and test["diff"] == (-0.5 if lost else 0.0)
    lost = np.tile([0.0, -1.0], EPISODES // 4)
    assert no_effect["head1"]["zero"]["detectable_effect"] == pytest.approx(
        (1.959964 + 0.841621) * lost.std(ddof=1) / np.sqrt(lost.size))
    # an equivalence the sample cannot resolve fails even with no episode changed: 2 episodes
    # resolve nothing below 1 − 0.05^(1/2) = 0.78
    few = study.no_effect(np.zeros(2), 0.1, 200, 0)
    assert few["tost_ci_low"] == few["tost_ci_high"] == 0.0 and (few["equivalent"], few["non_inferior"]) == (0, 0)
    assert few["resolved"] == 0
    assert few["resolution"] == pytest.approx(1 - 0.05 ** 0.5)
    assert study.no_effect(np.zeros(2), 0.8, 200, 0)["equivalent"] == 1
    # another reported perturbation size picks other rows
    other = study.summarize(hand_made_tables(), heads=2, neuron_layers=[LAYER], notebook_size=0.2, margin=0.1,
                            resamples=200, seed=0)
    assert other["perturbation_notebook"] == {}


def test_most_affecting_head_takes_the_larger_of_both_changes_and_the_lower_head_on_ties():
    closed = pd.DataFrame([r for c in [("head0_zero", "head", 0.0, 0.25), ("head1_zero", "head", -0.25, 0.0),
                                       ("head2_zero", "head", 0.125, -0.5)] for r in closed_rows(*c, half="rank")])
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
    assert names[:10] == ["none", "head0_zero", "head0_mean", "head0_resample", "head1_zero", "head1_mean",
                          "head1_resample", "branch_zero", "branch_mean", "branch_resample"]
    assert len(names) == 10 + 2 * len(layers) + 2 + 2 and names[-2:] == ["edit_rank_one", "edit_head_scale"]
    assert list(tables.closed_loop["condition"].unique()) == names
    tops = tables.closed_loop[tables.closed_loop["mode"] == "top"].drop_duplicates("condition")
    assert set(tops["units"]) == {"3 0"}                             # the ranking's best two, in rank order
    assert len(tables.closed_loop_episodes) == 3 * len(names)
    # the env seeds split by env seed: one to rank heads on, two to measure them on
    episodes = tables.closed_loop_episodes[tables.closed_loop_episodes.condition == "none"]
    first = cfg.env_seed
    assert episodes.groupby("half")["env_seed"].apply(list).to_dict() == {"rank": [first],
                                                                          "measure": [first + 1, first + 2]}
    halves = tables.closed_loop.groupby("half")["episodes"].max().to_dict()
    assert halves == {"all": 3, "rank": 1, "measure": 2}
    none = tables.closed_loop[(tables.closed_loop.condition == "none") & (tables.closed_loop.half == "all")]
    assert (none["diff"] == 0).all() and (none["episodes"] == 3).all()        # the control against itself
    # every condition's action shares on every half add up to 1
    shares = tables.closed_loop[tables.closed_loop.metric.isin(study.ACTION_METRICS)]
    np.testing.assert_allclose(shares.groupby(["condition", "half"])["value"].sum(), 1.0)
    # the whole run equals its halves: the all-episode rows are the rank and measure episodes together
    ep = tables.closed_loop_episodes
    for condition, rows in tables.closed_loop[tables.closed_loop.metric == "success"].groupby("condition"):
        value = rows.set_index("half")["value"]
        assert value["all"] == pytest.approx(ep[ep.condition == condition]["success"].mean())
    head, _ = study.most_affecting_head(tables.closed_loop, 2, "resample")
    assert tables.open_loop.iloc[-1]["target"] == f"head{head}"
    # the head-scaling edit is compared with the unablated agent's episodes, not with itself
    scaled = tables.closed_loop[(tables.closed_loop.condition == "edit_head_scale")
                                & (tables.closed_loop.half == "all")].set_index("metric")
    assert scaled.loc["success", "control"] == none.set_index("metric").loc["success", "value"]
    assert set(tables.perturbation["layer"]) == {*layers, RESID}
    assert set(tables.editing["edit"]) == {"edit_rank_one", "edit_head_scale"}
    brakes = tables.editing[(tables.editing.edit == "edit_rank_one") & (tables.editing.measure == "target_brakes")]
    assert brakes["value"].tolist() == [1]
    summary = study.summarize(tables, 2, layers, cfg.notebook_size, cfg.equivalence_margin, 100, 0)
    assert summary["closed_loop_baseline"]["episodes"] == 3 and summary["head_ablation"]["resample"]["head"] == head
    assert set(summary["perturbation_notebook"]) == {name.replace(".", "_") for name in [*layers, RESID]}
