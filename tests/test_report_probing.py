"""The report's probes and steering section: each finding's verdict in words (where it does not
hold, plainly), its control named, its numbers filled from the tables."""

from __future__ import annotations

import pandas as pd

from egolens.report import PLACEHOLDER, Context, build_report
from egolens.report.probing import PROBE_SECTIONS, verdict


def holds(**found: tuple[int, int]) -> pd.DataFrame:
    """holds.csv rows: finding -> (n_holds, n_seeds)."""
    return pd.DataFrame([{"finding": name, "kind": "finding", "statement": f"{name} statement.", "n_seeds": n,
                          "n_holds": k, "holds": f"{k}/{n}"} for name, (k, n) in found.items()],
                        columns=["finding", "kind", "statement", "n_seeds", "n_holds", "holds"])


def params() -> dict:
    return {"seeds": [0, 1, 2], "agent": {"heads": 2, "feature_size": 64},
            "probes": {"targets": ["distance", "crossing", "route_crosses", "action"], "held_out": 0.3},
            "steering": {"sites": ["attention_layer.hook_resid"], "alphas": [-2.0, 0.0, 2.0]}}


def summary() -> pd.DataFrame:
    rows = [("probes.targets.crossing.score", 0.71, 0.6, 0.8), ("probes.targets.crossing.obs", 0.62, 0.5, 0.7),
            ("probes.targets.route_crosses.minus_obs", -0.01, -0.05, 0.03),
            ("probes.targets.action.baseline", 0.333, 0.333, 0.333),
            ("steering.unsteered.collision_rate", 0.2, 0.1, 0.3),
            ("steering.sites.attention_layer_hook_resid.probe.collision_diff_highest_alpha.diff", 0.12, 0.05, 0.2)]
    table = pd.DataFrame(rows, columns=["metric", "mean", "ci_low", "ci_high"]).assign(n_seeds=3)
    table["max"] = table["mean"]
    return table


def test_verdicts_say_plainly_where_a_finding_does_not_hold():
    context = Context(summary(), holds(a=(3, 3), b=(1, 3), c=(0, 3), d=(0, 0), e=(0, 1)), params())
    assert verdict(context, "a") == "holds in all 3 seeds"
    assert verdict(context, "b") == "holds in only 1 of 3 seeds"
    assert verdict(context, "c") == "does **not** hold in any of the 3 seeds"
    assert verdict(context, "e") == "does **not** hold in the one seed"
    assert verdict(context, "d").startswith("could not be checked") and verdict(context, "x").startswith("could not")


def test_the_section_names_each_control_and_fills_its_numbers():
    found = holds(probe_vehicle_fact_above_controls=(2, 3), probe_route_fact_above_obs=(0, 3),
                  probe_action_before_output=(3, 3), safety_direction_steers_collisions=(0, 0))
    report = build_report(summary(), found, {}, params(), {})
    section = report.split("### What the layers represent")[1].split("## Findings per seed")[0]
    assert "`probe_vehicle_fact_above_controls` holds in only 2 of 3 seeds" in section
    assert "raw observation row, the untrained network at the same site and the control task" in section
    assert "`crossing` (AUC) 0.71 [0.6, 0.8] against 0.62 [0.5, 0.7] from the raw observation" in section
    assert "`probe_route_fact_above_obs` does **not** hold in any of the 3 seeds" in section
    assert "no proof that it is absent" in section
    assert "majority-action predictor" in section and "0.333 [0.333, 0.333] for the majority predictor" in section
    assert "`safety_direction_steers_collisions` could not be checked in any seed" in section
    assert "0.12 [0.05, 0.2] at α = 2" in section and "random directions" in section
    assert "ttc" not in section.split("How far")[0].split("Facts the observation")[1].split(")")[0]


def test_the_section_uses_only_known_placeholders_and_says_nothing_without_probes():
    context = Context(summary(), holds(), params())
    for section in PROBE_SECTIONS:
        for sentence in section.sentences:
            template = sentence(context)
            assert template is not None
            stripped = PLACEHOLDER.sub("", template)
            assert "{" not in stripped and "}" not in stripped, template
    bare = Context(summary(), holds(), {"seeds": [0]})
    assert all(sentence(bare) is None for section in PROBE_SECTIONS for sentence in section.sentences)


def test_whether_training_added_to_the_route_reading_is_judged_by_the_trained_minus_untrained_ci():
    found = holds(probe_route_fact_above_obs=(3, 3))

    def section(low: float, high: float) -> str:
        table = pd.concat([summary(), pd.DataFrame([{"metric": "probes.targets.route_crosses.minus_untrained",
                                                     "mean": (low + high) / 2, "ci_low": low, "ci_high": high,
                                                     "n_seeds": 3}])], ignore_index=True)
        return build_report(table, found, {}, params(), {}).split("Whether the network infers")[1]

    assert ("`route_crosses` 0.01 [-0.02, 0.04]: the untrained network reads it as well, so this is no evidence that "
            "training taught it") in section(-0.02, 0.04)
    assert "`route_crosses` 0.04 [0.02, 0.06]: training added to it" in section(0.02, 0.06)
    assert "the untrained network reads it better" in section(-0.06, -0.02)
    assert "trained − untrained" not in build_report(summary(), found, {}, params(), {})
