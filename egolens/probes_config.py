"""Typed params of the probes and steering stages: which targets a probe reads at which sites, how it
is fitted, and the directions, sites and α grid steering plays in closed loop."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

if TYPE_CHECKING:
    from egolens.config import AgentConfig

from egolens.analysis_config import InterventionsConfig
from egolens.config_base import Strict

PROBE_TARGETS = ("distance", "ttc", "crossing", "bearing_sector", "comes_close", "route_crosses", "turn",
                 "ego_speed", "junction_distance", "crossing_threat", "action", "action_next", "action_next2",
                 "outcome")
"""Every probe target's name (`egolens.analysis.reading.probe_targets.TARGETS` defines them; a test
keeps the two equal)."""
VEHICLE_TARGETS = PROBE_TARGETS[:7]
"""The targets with one value per (step, other vehicle); the others have one per step."""
CONTINUOUS_TARGETS = ("distance", "ttc", "ego_speed", "junction_distance")
CATEGORICAL_TARGETS = ("bearing_sector", "turn", "action", "action_next", "action_next2", "outcome")
"""Targets that are not binary: a categorical probe has no single direction to steer along."""
_VEHICLE_SITE = re.compile(r"others_embedding\.hook_post\.(\d+)|attention_layer\.hook_[kv]")
_STEP_SITE = re.compile(r"(?:ego_embedding|output_layer)\.hook_post\.(\d+)|"
                        r"attention_layer\.hook_(?:q|z|combined|resid)")
STEERABLE_SITE = re.compile(r"(?:ego_embedding|others_embedding|output_layer)\.hook_post\.\d+|"
                            r"attention_layer\.hook_(?:combined|resid)")
"""Sites whose activation's last axis is the probe's feature axis (one row of units per step or
vehicle): a probe direction there can be added back (`egolens.analysis.intervening.steering`)."""


def probe_site_level(site: str) -> Literal["vehicle", "step"]:
    """Whether a probe site has one row per other vehicle or one per step; an unknown name raises,
    naming the known forms."""
    if _VEHICLE_SITE.fullmatch(site):
        return "vehicle"
    if _STEP_SITE.fullmatch(site):
        return "step"
    raise ValueError(f"no probe site named {site!r}; sites: others_embedding.hook_post.<i>, attention_layer.hook_k "
                     "/ hook_v (one row per vehicle), ego_embedding.hook_post.<i>, output_layer.hook_post.<i>, "
                     "attention_layer.hook_q / hook_z / hook_combined / hook_resid (one row per step)")


def validate_alphas(alphas: list[float] | tuple[float, ...], key: str = "steering.alphas") -> tuple[float, ...]:
    """A steering α grid as sorted floats; raises naming `key` unless it is finite, without repeats
    and contains 0 (the unsteered reference every α is compared with)."""
    values = [float(a) for a in alphas]
    if not all(math.isfinite(a) for a in values):
        raise ValueError(f"{key} = {list(alphas)}: every α must be finite")
    if len(set(values)) != len(values):
        raise ValueError(f"{key} = {list(alphas)}: repeated values")
    if 0.0 not in values:
        raise ValueError(f"{key} = {list(alphas)}: the grid must contain 0 (the unsteered reference)")
    return tuple(sorted(values))


def _unique_known(key: str, names: list[str], known: tuple[str, ...]) -> list[str]:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{key}: unknown {unknown}; allowed: {list(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{key} = {names}: names must not repeat")
    return names


class ProbeTargetsConfig(Strict):
    """How the rollout's probe targets are computed (egolens.analysis.reading.probe_targets)."""

    ttc_cap: float = Field(10.0, gt=0.0)
    """s: times to collision above this (and "never") are set to it, a finite continuous target."""
    close_seconds: float = Field(3.0, gt=0.0)
    """s: comes_close looks this far ahead in the actual episode."""
    threat_ttc: float = Field(3.0, gt=0.0)
    """s: crossing_threat is a crossing vehicle with a time to collision below this."""


class ProbesConfig(Strict):
    """Linear probes with their controls (egolens.analysis.reading.probes; the probes stage)."""

    targets: list[str] = Field(default_factory=lambda: list(PROBE_TARGETS), min_length=1)
    """Probe targets (egolens.analysis.reading.probe_targets.TARGETS)."""
    sites: list[str] = Field(default_factory=lambda: [
        "others_embedding.hook_post.0", "others_embedding.hook_post.1", "attention_layer.hook_k",
        "attention_layer.hook_v", "ego_embedding.hook_post.1", "attention_layer.hook_resid",
        "output_layer.hook_post.0", "output_layer.hook_post.1"], min_length=1)
    """Hook sites probed; a target is probed at every site with its number of rows (per vehicle or per step)."""
    held_out: float = Field(0.3, gt=0.0, lt=1.0)
    """Fraction of the rollout's episodes held out for scoring (the same episodes for every probe)."""
    folds: int = Field(3, ge=2, le=20)
    """Cross-validation folds (grouped by episode) choosing each probe's regularisation."""
    logistic_c: list[float] = Field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0], min_length=1)
    """Inverse regularisation strengths tried for logistic probes (standardised features)."""
    ridge_alpha: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0],
                                     min_length=1)
    """Ridge penalties tried for continuous probes (standardised features)."""
    bootstrap_resamples: int = Field(1000, ge=100)
    """Resamples of held-out episodes for every interval."""
    processes: int = Field(2, gt=0, le=16)
    """Worker processes fitting the probes (the table does not depend on their number)."""

    @field_validator("targets")
    @classmethod
    def _targets_known(cls, targets: list[str]) -> list[str]:
        return _unique_known("probes.targets", targets, PROBE_TARGETS)

    @field_validator("sites")
    @classmethod
    def _sites_known(cls, sites: list[str]) -> list[str]:
        for name in sites:
            try:
                probe_site_level(name)
            except ValueError as error:
                raise ValueError(f"probes.sites: {error}") from None
        if len(set(sites)) != len(sites):
            raise ValueError(f"probes.sites = {sites}: names must not repeat")
        return sites

    @field_validator("logistic_c", "ridge_alpha")
    @classmethod
    def _positive_grid(cls, grid: list[float]) -> list[float]:
        if any(not g > 0 for g in grid):
            raise ValueError("regularisation values must be positive")
        return grid

    @model_validator(mode="after")
    def _every_target_has_a_site(self) -> ProbesConfig:
        levels = {probe_site_level(s) for s in self.sites}
        lacking = [t for t in self.targets if ("vehicle" if t in VEHICLE_TARGETS else "step") not in levels]
        if lacking:
            raise ValueError(f"probes.targets {lacking} have no site in probes.sites = {self.sites} with their rows "
                             f"(per-vehicle targets {list(VEHICLE_TARGETS)} need a per-vehicle site, the others a "
                             "per-step site)")
        return self


class SteeringConfig(Strict):
    """Closed-loop steering along probe, mean-difference and random directions (the steering stage)."""

    sites: list[str] = Field(default_factory=lambda: ["others_embedding.hook_post.1", "attention_layer.hook_resid"],
                             min_length=1)
    """Sites steered (each also in probes.sites: the probe direction comes from there)."""
    safety_targets: list[str] = Field(default_factory=lambda: ["comes_close", "crossing", "ttc", "crossing_threat"],
                                      min_length=1)
    """Safety-relevant binary or continuous targets; at each site the most selective one gives the probe direction."""
    alphas: list[float] = Field(default_factory=lambda: [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], min_length=2)
    """Signed steering strengths in units of the site's activation RMS; must contain 0."""
    random_directions: int = Field(3, ge=3)
    """Random directions of equal norm per site (the control)."""
    episodes: int = Field(50, gt=0)
    """Closed-loop episodes per condition, on the interventions stage's held-out env seeds (the first this many)."""
    num_envs: int = Field(2, gt=0, le=16)
    """Envs playing a condition in parallel (the results do not depend on it)."""
    bootstrap_resamples: int = Field(2000, ge=100)

    @field_validator("alphas")
    @classmethod
    def _alphas_with_zero(cls, alphas: list[float]) -> list[float]:
        validate_alphas(alphas, "steering.alphas")
        return alphas

    @field_validator("sites")
    @classmethod
    def _sites_steerable(cls, sites: list[str]) -> list[str]:
        bad = [s for s in sites if not STEERABLE_SITE.fullmatch(s)]
        if bad:
            raise ValueError(f"steering.sites: {bad} cannot be steered; allowed: ego_embedding / others_embedding / "
                             "output_layer .hook_post.<i>, attention_layer.hook_combined, attention_layer.hook_resid")
        return sites

    @field_validator("safety_targets")
    @classmethod
    def _safety_targets_steerable(cls, targets: list[str]) -> list[str]:
        _unique_known("steering.safety_targets", targets, PROBE_TARGETS)
        categorical = [t for t in targets if t in CATEGORICAL_TARGETS]
        if categorical:
            raise ValueError(f"steering.safety_targets: {categorical} are categorical (one direction per class); "
                             "allowed: binary or continuous targets")
        return targets


def check_probe_sites(probes: ProbesConfig, steering: SteeringConfig, agent: AgentConfig,
                      interventions: InterventionsConfig) -> None:
    """Every probe and steering site is an activation the rollout records; every steering site is
    probed, with a safety target of its rows among the probed targets."""
    for key, sites in (("probes.sites", probes.sites), ("steering.sites", steering.sites)):
        for name in sites:
            index = re.fullmatch(r"(\w+)\.hook_post\.(\d+)", name)
            if index is None:
                continue
            layers = agent.output_layers if index[1] == "output_layer" else agent.embedding_layers
            if int(index[2]) >= len(layers):
                raise ValueError(f"{key}: {name} is not recorded: {index[1]} has {len(layers)} hidden layers "
                                 f"(hook_post.0 to hook_post.{len(layers) - 1})")
    unprobed = [s for s in steering.sites if s not in probes.sites]
    if unprobed:
        raise ValueError(f"steering.sites {unprobed} are not in probes.sites = {probes.sites} (the probe "
                         "direction comes from there)")
    for name in steering.sites:
        level = probe_site_level(name)
        safety = [t for t in steering.safety_targets if t in probes.targets
                  and (t in VEHICLE_TARGETS) == (level == "vehicle")]
        if not safety:
            raise ValueError(f"steering.sites: {name} has no probed safety target with one row per {level} "
                             f"(steering.safety_targets = {steering.safety_targets}, probes.targets = "
                             f"{probes.targets})")
    if steering.episodes > interventions.closed_loop_episodes:
        raise ValueError(f"steering.episodes = {steering.episodes} must be <= "
                         f"interventions.closed_loop_episodes = {interventions.closed_loop_episodes} "
                         "(steering plays the first of the interventions' held-out env seeds)")
