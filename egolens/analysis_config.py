"""Typed params of the analysis stages (scene facts, circuits, attributions, neurons, interventions);
`egolens.config.Params` holds them beside the study's env, agent and training params."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from egolens.config_base import Strict, held_out_seeds


class SceneConfig(Strict):
    """How scene facts are computed from observations (egolens.scene)."""

    horizon: float = Field(5.0, gt=0.0)
    """s: look-ahead of the constant-velocity paths for 'crossing'."""
    collision_radius: float = Field(5.0, gt=0.0)
    """m: the gap below which two vehicles count as colliding for time-to-collision."""
    min_ego_speed: float = Field(4.5, ge=0.0)
    """m/s: the ego's path is drawn at least this fast (it can always speed up to IDLE's target)."""


class AttributionsConfig(Strict):
    """Attribution analyses on recorded steps (egolens.analysis.attribution.attribution_study)."""

    max_steps: int = Field(300, gt=0)
    """Recorded steps analysed per network (evenly spaced over the rollouts)."""
    path_grid: int = Field(512, ge=2)
    """Points each IG / conductance path is first sampled at to find where a ReLU switches (the
    kinks the path is cut at, `analysis.paths`)."""
    path_grid_max: int = Field(32768, ge=2)
    """Finest kink grid: steps whose completeness error is still >= `tolerance` are redone on a 4×
    finer grid up to this (`paths.refine_until_complete`)."""
    segment_points: int = Field(2, ge=1, le=32)
    """Gauss-Legendre points per piece of a path between two kinks."""
    neuron_steps: int = Field(64, ge=8)
    """Path points of captum's neuron conductance (the top neurons' breakdown, a fixed grid)."""
    internal_batch_size: int = Field(2048, gt=0)
    shapley_samples: int = Field(25, gt=0)
    top_neurons: int = Field(5, gt=0)
    """Neurons per layer given a neuron-conductance breakdown."""
    random_orders: int = Field(5, gt=0)
    """Random vehicle orders per step for the deletion/insertion control."""
    sanity_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    """Median trained-vs-untrained rank correlation above which an explanation is flagged."""
    tolerance: float = Field(0.01, gt=0.0, lt=1.0)
    """Completeness error, as a fraction of |ΔQ|, below which a step's path attribution counts as
    complete (`within`); paths are refined until their steps are, up to `path_grid_max`."""
    min_delta: float = Field(0.001, gt=0.0)
    """|ΔQ| below which a step has nothing to explain: no completeness error (flagged `tiny`), no refinement."""
    min_vehicles: int = Field(3, ge=2)
    """Fewest vehicles a per-step rank correlation of attention (with attributions or scene facts) needs."""
    bootstrap_resamples: int = Field(2000, ge=100)
    """Bootstrap resamples of the paired 95% intervals over analysed steps (attention against the naive
    rankings, deletion orders against random ones; the steps of one episode are drawn together)."""

    @model_validator(mode="after")
    def _max_not_below_start(self) -> AttributionsConfig:
        if self.path_grid_max < self.path_grid:
            raise ValueError(f"attributions.path_grid_max = {self.path_grid_max} must be >= attributions.path_grid = "
                             f"{self.path_grid}; allowed: any integer >= {self.path_grid}")
        return self


class NeuronsConfig(Strict):
    """Neuron studies and lenses (egolens.analysis.reading: neuron_facts, neuron_stats, neuron_dictionary,
    feature_visualisation, lens)."""

    top_k: int = Field(10, gt=0)
    """Top activating steps per neuron in the semantic dictionary."""
    over_time_neurons: int = Field(16, gt=0)
    """Most variable neurons per step-level layer shown over the first recorded episode."""
    visualise_neurons: int = Field(4, ge=0)
    """Neurons per layer whose preferred observation is optimised and drawn."""
    restarts: int = Field(4, gt=0)
    """Random starts per feature-visualisation objective; the best one is drawn."""
    optimisation_steps: int = Field(200, gt=0)
    """Adam steps per feature-visualisation restart."""
    lens_held_out: float = Field(0.3, gt=0.0, lt=1.0)
    """Fraction of episodes held out when fitting the tuned lens."""
    lens_ridge: float = Field(1e-4, ge=0.0)
    """Ridge on the tuned lens's affine probes (relative to the number of training rows)."""
    bootstrap_resamples: int = Field(2000, ge=100)
    """Bootstrap resamples of the lens controls' 95% intervals (episodes resampled)."""
    lr: float = Field(0.05, gt=0.0)
    """Adam step size of the feature visualisation's gradient ascent."""
    prior_weight: float = Field(0.1, ge=0.0)
    """Weight of the squared distance to the mean recorded state (the prior) in feature visualisation."""
    diversity: float = Field(0.1, ge=0.0)
    """Reward for feature-visualisation restarts that end apart (rms distance between restarts)."""
    ttc_cap: float = Field(20.0, gt=0.0)
    """s: times to collision above it (inf included) are set to it before neuron-fact rank correlations."""
    dictionary_min_lift: float = Field(0.25, ge=0.0, le=1.0)
    """A semantic-dictionary statement must hold for this much larger a fraction of top rows than of all rows."""
    dictionary_alpha: float = Field(0.05, gt=0.0, lt=1.0)
    """Family-wise significance level of a neuron's dictionary statements (Bonferroni over those tried)."""
    dictionary_max_clauses: int = Field(3, gt=0)
    """Statements (of distinct facts) kept per neuron description, best lift first."""


BinEdges = Annotated[list[int | Annotated[float, Field(allow_inf_nan=True)]], Field(min_length=2)]
"""Bin edges as `pandas.cut` takes them; an integer edge prints as an integer in the bin labels, and
`.inf` closes an open-ended last bin."""


class FactBins(Strict):
    """Right-closed bins of the scene facts the recorded attention scores are grouped by."""

    distance: BinEdges = Field(default_factory=lambda: [0, 10, 20, 30, 40, 60, 100, 150])
    """m: distance of the other vehicle from the ego."""
    ttc: BinEdges = Field(default_factory=lambda: [0, 1, 2, 3, 5, 8, 13, float("inf")])
    """s: time to collision with the ego."""
    bearing_deg: BinEdges = Field(default_factory=lambda: [-180, -135, -90, -45, -15, 15, 45, 90, 135, 180])
    """deg: bearing of the other vehicle from the ego's heading (positive = the ego's right)."""

    @model_validator(mode="after")
    def _increasing(self) -> FactBins:
        for name in FactBins.model_fields:
            edges = getattr(self, name)
            if not all(a < b for a, b in zip(edges[:-1], edges[1:])):
                raise ValueError(f"circuits.fact_bins.{name} = {edges}: edges must be strictly increasing numbers")
        return self


class CircuitsConfig(Strict):
    """Weight circuits and recorded attention scores (egolens.analysis.reading.circuits)."""

    fact_bins: FactBins = FactBins()


class InterventionsConfig(Strict):
    """Ablations, patching, perturbation sweeps and edits (egolens.analysis.intervening.intervention_study)."""

    closed_loop_episodes: int = Field(50, ge=2)
    """Greedy episodes per closed-loop condition (the same env seeds for every condition), split in two
    by env seed: heads are ranked on the first half, their effects measured on the second."""
    env_seed: int = Field(970_000_000, ge=0)
    """Held-out env seeds env_seed, env_seed + 1, ... (disjoint from every training seed)."""
    num_envs: int = Field(2, gt=0, le=16)
    """Envs playing a closed-loop condition in parallel (one process each; the results do not depend on it)."""
    top_k: int = Field(5, gt=0)
    """Neurons per layer ablated as the top set (the best-ranked by the attributions stage's conductance)."""
    random_sets: int = Field(3, gt=0)
    """Random neuron sets of the same size per layer (the control; drawn outside the top set)."""
    patch_pairs: int = Field(100, gt=0)
    """Maximum clean/corrupted pairs per kind of pair."""
    min_metric_change: float = Field(0.05, ge=0.0)
    """Pairs whose Q(SLOWER) − Q(FASTER) differs by less are dropped (restored fraction divides by it)."""
    change_factor: float = Field(0.5, gt=0.0, lt=1.0)
    """A moved vehicle's offset from the ego, and a slowed ego's speed, are multiplied by this."""
    perturbation_sizes: list[float] = Field(default_factory=lambda: [-1.0, -0.3, -0.1, -0.03, 0.03, 0.1, 0.3, 1.0],
                                            min_length=1)
    """Signed perturbation sizes (root-mean-square change per unit)."""
    random_directions: int = Field(3, ge=0)
    """Random perturbation directions per layer (besides uniform and the top principal direction)."""
    notebook_size: float = Field(0.1, gt=0.0)
    """The perturbation summary.json reports (perturbation_notebook): this size on every unit (uniform
    direction), the reference notebook's +0.1; must be one of perturbation_sizes."""
    head_scale: float = Field(2.0, ge=0.0)
    """Factor applied to the output weights of the head whose ablation changes closed-loop outcomes most."""
    edit_ridge: float = Field(1e-4, ge=0.0)
    """Ridge added to C = E[k kᵀ] (relative to its mean eigenvalue) for the rank-one edit."""
    edit_margin: float = Field(0.1, gt=0.0)
    """When no recorded step brakes, the rank-one edit sets the target step's Q(SLOWER) to max Q + this."""
    bootstrap_resamples: int = Field(2000, ge=100)
    """Bootstrap resamples of every 95% interval (open-loop rates over steps, closed-loop paired diffs)."""
    equivalence_margin: float = Field(0.12, gt=0.0, lt=1.0)
    """Largest closed-loop rate difference counted as "no effect": a no-effect finding holds only when a
    two one-sided test (TOST, 5%) puts the difference inside ± this (a rate, in (0, 1))."""

    @field_validator("perturbation_sizes")
    @classmethod
    def _nonzero_sizes(cls, sizes: list[float]) -> list[float]:
        if any(s == 0 for s in sizes):
            raise ValueError("perturbation sizes must be non-zero")
        return sizes

    @model_validator(mode="after")
    def _notebook_size_is_swept(self) -> InterventionsConfig:
        """The summary picks the size out of the sweep with numpy.isclose's default tolerance."""
        if not any(abs(s - self.notebook_size) <= 1e-8 + 1e-5 * self.notebook_size for s in self.perturbation_sizes):
            raise ValueError(f"interventions.notebook_size = {self.notebook_size} is not one of "
                             f"interventions.perturbation_sizes = {self.perturbation_sizes}")
        return self

    @property
    def env_seeds(self) -> list[int]:
        """The held-out env seeds of every closed-loop condition (the same for each)."""
        return held_out_seeds(self.env_seed, self.closed_loop_episodes)


ROUTE_NODES = ("o0", "o1", "o2", "o3")
"""Entry and exit nodes of intersection-v0: south, west, north, east (the ego enters at o0)."""


class ScenesConfig(Strict):
    """Designed counterfactual scenes (egolens.analysis.intervening.scene_study): the ego fixed before the
    junction, one conflicting vehicle whose arrival at the conflict point is swept."""

    ego_longitudinal: float = Field(90.0, ge=0.0, le=100.0)
    """m along the ego's 100 m approach lane (the junction starts at its end). At 90 m and 9 m/s the ego
    reaches the conflict point of a vehicle from the west in 2.2 s, so the clairvoyant planner brakes at
    once when going now collides; from 80 m it can still go on for a second and brake then."""
    ego_speed: float = Field(9.0, ge=0.0, le=10.0)
    """m/s: the ego's speed (its target speed is the closest of env.target_speeds)."""
    other_speed: float = Field(8.0, gt=0.0, le=10.0)
    """m/s: the conflicting vehicle's constant speed (10 m/s is the lanes' limit)."""
    gap_start: float = -4.0
    gap_stop: float = 6.0
    gap_step: float = Field(0.5, gt=0.0)
    """s: the swept gap, the conflicting vehicle's arrival at the conflict point minus the ego's were it to
    go on at its speed: gap_start, gap_start + gap_step, ... up to gap_stop (included)."""
    routes: list[str] = Field(default_factory=lambda: ["o1-o3", "o3-o1"], min_length=1)
    """The conflicting vehicle's routes, `entry-exit` (o1 west, o2 north, o3 east; the ego enters at o0)."""
    visible: list[bool] = Field(default_factory=lambda: [False], min_length=1)
    """Sweep with the vehicle's destination observed (true: needs cos_d, sin_d in env.features) and/or hidden."""
    env_seed: int = Field(0, ge=0)
    """Seed of the reset every scene is built from (it fixes the env's random state, e.g. the row order)."""

    @field_validator("routes")
    @classmethod
    def _routes(cls, routes: list[str]) -> list[str]:
        for route in routes:
            entry, _, exit_ = route.partition("-")
            if entry not in ROUTE_NODES[1:] or exit_ not in ROUTE_NODES or entry == exit_:
                raise ValueError(f"route {route!r}: write entry-exit with entry in {list(ROUTE_NODES[1:])} (not the "
                                 f"ego's o0) and a different exit in {list(ROUTE_NODES)}, e.g. 'o1-o3'")
        if len(set(routes)) != len(routes):
            raise ValueError("routes must not repeat")
        return routes

    @field_validator("visible")
    @classmethod
    def _visible_distinct(cls, visible: list[bool]) -> list[bool]:
        if len(set(visible)) != len(visible):
            raise ValueError("visible must not repeat; allowed: [false], [true] or [false, true]")
        return visible

    @model_validator(mode="after")
    def _grid(self) -> ScenesConfig:
        if not self.gap_start < self.gap_stop:
            raise ValueError(f"scenes.gap_start = {self.gap_start} must be < scenes.gap_stop = {self.gap_stop}")
        count = int(math.floor((self.gap_stop - self.gap_start) / self.gap_step + 1e-9)) + 1
        if not 3 <= count <= 200:
            raise ValueError(f"scenes.gap_step = {self.gap_step} gives {count} gaps from scenes.gap_start to "
                             "scenes.gap_stop; allowed: 3 to 200 gaps")
        return self

    @property
    def gaps(self) -> list[float]:
        """The swept gaps (s), increasing, rounded to 1e-9 s so that the grid's bytes do not depend on
        float accumulation."""
        count = int(math.floor((self.gap_stop - self.gap_start) / self.gap_step + 1e-9)) + 1
        return [round(self.gap_start + i * self.gap_step, 9) for i in range(count)]
