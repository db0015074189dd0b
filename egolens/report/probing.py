"""The report's section on probes and steering (issue 23): what a linear probe reads at each layer
beside its controls, and whether a probe's direction steers the agent in closed loop. Every
sentence names its finding's control and says plainly where the finding does not hold (`verdict`).
Numbers are the probes / steering summaries' means over seeds (`probes.targets.<target>.*` at the
target's most selective site, `steering.sites.<site>.*`)."""

from __future__ import annotations

import math

from egolens.report.context import Context, Section
from egolens.sites import json_key


def verdict(c: Context, finding: str) -> str:
    """Where `finding` holds, in words: every seed, only some, none, or not checkable."""
    rows = c.holds[c.holds["finding"] == finding]
    if rows.empty or int(rows["n_seeds"].iloc[0]) == 0:
        return ("could not be checked in any seed (the numbers it needs are missing: no probe could be fitted, "
                "or too few held-out episodes for an interval)")
    n, k = int(rows["n_seeds"].iloc[0]), int(rows["n_holds"].iloc[0])
    if k == n:
        return f"holds in {'the one seed' if n == 1 else f'all {n} seeds'}"
    if k == 0:
        return f"does **not** hold in {'the one seed' if n == 1 else f'any of the {n} seeds'}"
    return f"holds in only {k} of {n} seeds"


def _probed(c: Context, targets: tuple[str, ...]) -> list[str]:
    chosen = c.param("probes.targets") or []
    return [t for t in targets if t in chosen]                               # type: ignore[operator]


def _scores(c: Context, target: str) -> str:
    metric = {"crossing": "AUC", "comes_close": "AUC", "route_crosses": "AUC", "crossing_threat": "AUC"}.get(
        target, "balanced accuracy" if target in ("bearing_sector", "turn", "action") else "R²")
    t = f"probes.targets.{target}"
    return (f"`{target}` ({metric}) {{m:{t}.score}} against {{m:{t}.obs}} from the raw observation, "
            f"{{m:{t}.untrained}} from the untrained network and selectivity {{m:{t}.selectivity}}")


def _vehicle_facts(c: Context) -> str | None:
    targets = _probed(c, ("distance", "ttc", "crossing", "bearing_sector"))
    if not targets:
        return None
    return (f"Facts the observation implies about another vehicle: the finding `probe_vehicle_fact_above_controls` "
            f"{verdict(c, 'probe_vehicle_fact_above_controls')} (a linear probe reads one of "
            f"{', '.join(targets)} at some per-vehicle site above the vehicle's raw observation row, the untrained "
            "network at the same site and the control task, each by a paired CI over held-out episodes). At each "
            "target's most selective site (means over seeds): " + "; ".join(_scores(c, t) for t in targets) + ".")


def _route_facts(c: Context) -> str | None:
    targets = _probed(c, ("route_crosses", "turn"))
    if not targets:
        return None
    above_all = ", ".join(f"`{t}` in {{pct:probes.targets.{t}.above_controls}} of seeds" for t in targets)
    return ("Whether the network infers where other vehicles are going (their route, which the observation does "
            f"not contain): `probe_route_fact_above_obs` {verdict(c, 'probe_route_fact_above_obs')} (some "
            "per-vehicle site reads the route better than the raw observation row, paired CI of site − observation "
            "above 0). At the most selective site: " + "; ".join(_scores(c, t) for t in targets)
            + f". Above all three controls, the untrained network included: {above_all}"
            + _untrained_reads_routes(c, targets) + ". Where the finding does "
            "not hold, the route was not shown to be read beyond the observation; a CI that includes 0 is no proof "
            "that it is absent.")


def _untrained_reads_routes(c: Context, targets: list[str]) -> str:
    """Whether training added to each route target's reading: the trained − untrained difference at the
    target's most selective site (mean over seeds), read by which side of 0 its CI lies on."""
    said = {1: "training added to it", 0: "the untrained network reads it as well, so this is no evidence that "
            "training taught it", -1: "the untrained network reads it better"}
    parts = [f"`{t}` {{m:probes.targets.{t}.minus_untrained}}: {said[side]}" for t in targets
             if (side := c.ci_side(f"probes.targets.{t}.minus_untrained")) is not None]
    return "; trained − untrained at the most selective site: " + "; ".join(parts) if parts else ""


def _next_action(c: Context) -> str | None:
    if not _probed(c, ("action",)):
        return None
    t = "probes.targets.action"
    return ("Whether the agent's action is readable before the output MLP: `probe_action_before_output` "
            f"{verdict(c, 'probe_action_before_output')} (a per-step site before the output MLP beats the "
            "majority-action predictor fitted on the same training episodes, paired CI of the balanced-accuracy "
            f"difference above 0). At the most selective site the probe's balanced accuracy is {{m:{t}.score}} "
            f"against {{m:{t}.baseline}} for the majority predictor and {{m:{t}.obs}} from the raw observation.")


def _steering(c: Context) -> str | None:
    sites = c.param("steering.sites")
    alphas = c.param("steering.alphas")
    if not sites or not alphas:
        return None
    parts = []
    for site in sites:                                                        # type: ignore[union-attr]
        s = f"steering.sites.{json_key(str(site))}"
        parts.append(f"at `{site}` the safety probe's direction changes the collision rate by "
                     f"{{m:{s}.probe.collision_diff_lowest_alpha.diff}} at α = {min(alphas):g} and "
                     f"{{m:{s}.probe.collision_diff_highest_alpha.diff}} at α = {max(alphas):g}, the random "
                     f"directions by at most {{max:{s}.random.largest_abs_collision_diff}}")
    return ("Steering in closed loop (α in units of the site's activation RMS, against α = 0 on the same env seeds; "
            "unsteered collision rate {m:steering.unsteered.collision_rate}): `safety_direction_steers_collisions` "
            f"{verdict(c, 'safety_direction_steers_collisions')} (the collision rate moves to opposite sides of "
            "α = 0's at the two ends of the α grid by paired CIs, while no random direction of equal norm changes "
            "it at any α). Means over seeds: " + "; ".join(parts) + ".")


def _caveat(c: Context) -> str | None:
    if not c.param("probes.targets"):
        return None
    held_out = c.param("probes.held_out")
    share = f"{100 * held_out:.0f}%" if isinstance(held_out, float) and math.isfinite(held_out) else "a share"
    return (f"How far to trust these: probes are scored on {share} of the rollout's episodes held out (split by "
            "episode, never by step); a \"some site\" finding takes the best of several sites and targets, each "
            "at 95% with no correction for the number tried; the per-seed figures are results/seeds/seed<N>/"
            "probes/probes.png and steering/steering.png.")


PROBE_SECTIONS: tuple[Section, ...] = (
    Section("What the layers represent, and whether a probe's direction steers the agent",
            (_vehicle_facts, _route_facts, _next_action, _steering, _caveat)),
)
"""The probes and steering section, after the other findings sections."""
