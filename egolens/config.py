"""Typed models of params.yaml; `load_params` validates and fails fast naming the bad key.

Every stage calls `load_params()` before any heavy work, so a typo in params.yaml costs
seconds, not a training run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from egolens.analysis_config import (
    AttributionsConfig,
    CircuitsConfig,
    InterventionsConfig,
    NeuronsConfig,
    SceneConfig,
)
from egolens.config_base import ParamsError, Strict, held_out_seeds
from egolens.vocabulary import REFERENCE_FEATURES

KINEMATICS_FEATURES = ("presence", "x", "y", "vx", "vy", "cos_h", "sin_h", "heading", "cos_d", "sin_d",
                       "long_off", "lat_off", "ang_off")
"""Features highway-env's Kinematics observation can produce."""
INTENTION_FEATURES = ("cos_d", "sin_d")
"""The destination features, non-zero only with `observe_intentions`."""

# Episode indices are offset by seed * SEED_STRIDE to get each training episode's env seed,
# so training env seeds of agent seed s lie in [s * SEED_STRIDE, (s + 1) * SEED_STRIDE).
SEED_STRIDE = 1_000_000


class FeaturesRange(Strict):
    x: list[float] = Field(default_factory=lambda: [-100.0, 100.0], min_length=2, max_length=2)
    y: list[float] = Field(default_factory=lambda: [-100.0, 100.0], min_length=2, max_length=2)
    vx: list[float] = Field(default_factory=lambda: [-20.0, 20.0], min_length=2, max_length=2)
    vy: list[float] = Field(default_factory=lambda: [-20.0, 20.0], min_length=2, max_length=2)

    @model_validator(mode="after")
    def _ordered(self) -> FeaturesRange:
        for name in ("x", "y", "vx", "vy"):
            low, high = getattr(self, name)
            if not low < high:
                raise ValueError(f"env.features_range.{name} = [{low}, {high}]: low must be < high")
        return self


class EnvConfig(Strict):
    """intersection-v0 as the reference notebook configured it (README, "The network and the DQN")."""

    id: Literal["intersection-v0", "intersection-v2"] = "intersection-v0"
    """v0 is the reference (it keeps highway-env's neighbour-search bug); v2 fixes that bug."""
    vehicles_count: int = Field(15, ge=2, le=50)
    features: list[Literal[KINEMATICS_FEATURES]] = Field(default_factory=lambda: list(REFERENCE_FEATURES))  # type: ignore[valid-type]
    features_range: FeaturesRange = FeaturesRange()
    absolute: bool = True
    order: Literal["shuffled", "sorted"] = "shuffled"
    observe_intentions: bool = False
    """Give the other vehicles' destinations as the features `cos_d`, `sin_d` (which must then be listed)."""
    target_speeds: list[float] = Field(default_factory=lambda: [0.0, 4.5, 9.0], min_length=2)
    duration: int = Field(13, gt=0)
    policy_frequency: int = Field(1, gt=0)
    simulation_frequency: int = Field(15, gt=0)
    destination: Literal["o0", "o1", "o2", "o3"] = "o1"
    initial_vehicle_count: int = Field(10, ge=0)
    spawn_probability: float = Field(0.6, ge=0.0, le=1.0)
    collision_reward: float = -5.0
    high_speed_reward: float = 1.0
    arrived_reward: float = 1.0
    reward_speed_range: list[float] = Field(default_factory=lambda: [7.0, 9.0], min_length=2, max_length=2)
    normalize_reward: bool = False

    @field_validator("features")
    @classmethod
    def _presence_first(cls, features: list[str]) -> list[str]:
        if not features or features[0] != "presence":
            raise ValueError("the first feature must be 'presence' (the network masks absent vehicles by it)")
        if len(set(features)) != len(features):
            raise ValueError("features must not repeat")
        missing = [f for f in REFERENCE_FEATURES if f not in features]
        if missing:
            raise ValueError(f"features must include {REFERENCE_FEATURES} (scene facts, the rollouts and the reference "
                             f"driver read them); missing {missing}")
        return features

    @model_validator(mode="after")
    def _ranges_ordered(self) -> EnvConfig:
        low, high = self.reward_speed_range
        if not low < high:
            raise ValueError(f"env.reward_speed_range = {self.reward_speed_range}: low must be < high")
        intentions = [f for f in INTENTION_FEATURES if f in self.features]
        if self.observe_intentions and len(intentions) < len(INTENTION_FEATURES):
            raise ValueError(f"env.observe_intentions = true without {list(INTENTION_FEATURES)} in env.features "
                             f"= {self.features} does nothing (highway-env only stops zeroing those features); "
                             f"add {[f for f in INTENTION_FEATURES if f not in intentions]} to env.features")
        if intentions and not self.observe_intentions:
            raise ValueError(f"env.features = {self.features} lists {intentions}, which highway-env zeroes unless "
                             "env.observe_intentions = true; set env.observe_intentions: true or drop them")
        if sorted(self.target_speeds) != list(self.target_speeds) or len(self.target_speeds) != 3:
            raise ValueError(f"env.target_speeds = {self.target_speeds}: give three increasing speeds "
                             "(SLOWER, IDLE, FASTER)")
        return self


class EpsilonConfig(Strict):
    """epsilon(t) = final + (start - final) * exp(-t / tau), t = action steps taken."""

    start: float = Field(1.0, ge=0.0, le=1.0)
    final: float = Field(0.05, ge=0.0, le=1.0)
    tau: float = Field(15000.0, gt=0.0)

    @model_validator(mode="after")
    def _decays(self) -> EpsilonConfig:
        if self.final > self.start:
            raise ValueError(f"agent.epsilon.final = {self.final} must be <= agent.epsilon.start = {self.start}")
        return self


class ExplorationConfig(Strict):
    """How long an exploratory action lasts once ε has chosen to explore.

    `one`: one step (ε-greedy). `zeta`: temporally-extended ε-greedy (εz-greedy, Dabney, Ostrovski &
    Barreto 2021): a uniformly drawn action repeated for n steps, n ~ zeta(zeta_mu) capped at
    max_duration; no ε draw is made while an option runs."""

    duration: Literal["one", "zeta"] = "one"
    zeta_mu: float = Field(2.0, gt=1.0)
    """Exponent of the zeta distribution P(n) ∝ n^-mu (the paper's mu = 2)."""
    max_duration: int = Field(10, ge=1)
    """Longest option, in action steps."""


class DQfDConfig(Strict):
    """Deep Q-learning from demonstrations (Hester et al. 2018) on the demonstrations stage's planner
    episodes: they stay in a store of their own (never overwritten), every gradient batch takes a
    fixed share of its rows from it, and the loss is 1-step TD + n-step TD (agent.n_steps) on every
    row + weight · large-margin term on the demonstration rows; optional pre-training on
    demonstration batches alone before the first env step."""

    enabled: bool = False
    margin: float = Field(0.8, gt=0.0)
    """l(a_E, a) for a ≠ a_E in the large-margin term max_a[Q(s,a) + l(a_E,a)] − Q(s,a_E)."""
    weight: float = Field(1.0, ge=0.0)
    """λ of the large-margin term (its mean over the batch's demonstration rows)."""
    demo_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    """Share of each batch drawn from the demonstrations: round(demo_fraction · batch_size) rows."""
    pretrain_steps: int = Field(1000, ge=0)
    """Gradient steps on demonstration batches alone before the first env step (they count as
    gradient steps for the target copies)."""


class AgentConfig(Strict):
    """The EgoAttentionNetwork and DQN of rl-agents' `ego_attention.json` and intersection `baseline.json`."""

    heads: int = Field(2, gt=0)
    feature_size: int = Field(64, gt=0)
    embedding_layers: list[int] = Field(default_factory=lambda: [64, 64], min_length=1)
    output_layers: list[int] = Field(default_factory=lambda: [64, 64], min_length=1)
    gamma: float = Field(0.95, gt=0.0, le=1.0)
    batch_size: int = Field(64, gt=0)
    memory_capacity: int = Field(15000, gt=0)
    target_update: int = Field(512, gt=0)
    lr: float = Field(5e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    epsilon: EpsilonConfig = EpsilonConfig()
    exploration: ExplorationConfig = ExplorationConfig()
    n_steps: int = Field(1, ge=1, le=20)
    """Transitions collapsed into one n-step return (rl-agents' memory `n_steps`)."""
    loss: Literal["l2", "smooth_l1"] = "l2"
    """TD loss: mean squared error or Huber (rl-agents' `loss_function`)."""
    double: bool = True
    """Double DQN (the online net picks a′, the target net values it) or plain DQN's max."""
    timeout_terminal: bool = False
    """Treat the end at the time limit as terminal (no bootstrap), as the paper's period did."""
    dqfd: DQfDConfig = DQfDConfig()
    """Demonstrations in the replay with DQfD's losses (off: the plain DQN, byte for byte)."""

    @model_validator(mode="after")
    def _shapes_fit(self) -> AgentConfig:
        if self.feature_size % self.heads:
            divisors = [h for h in range(1, self.feature_size + 1) if self.feature_size % h == 0]
            raise ValueError(f"agent.heads = {self.heads} must divide agent.feature_size = {self.feature_size}; "
                             f"allowed heads: {divisors}")
        if len(self.embedding_layers) != 2 or len(self.output_layers) != 2:
            raise ValueError(f"agent.embedding_layers = {self.embedding_layers} and agent.output_layers = "
                             f"{self.output_layers} must have two layers each (the reference network's depth, "
                             "which the analyses' layer names assume)")
        if self.embedding_layers[-1] != self.feature_size:
            raise ValueError(f"agent.embedding_layers = {self.embedding_layers} must end with "
                             f"agent.feature_size = {self.feature_size}")
        if any(n <= 0 for n in self.embedding_layers + self.output_layers):
            raise ValueError("agent.embedding_layers / agent.output_layers: layer sizes must be positive")
        if self.memory_capacity < self.batch_size:
            raise ValueError(f"agent.memory_capacity = {self.memory_capacity} must be >= "
                             f"agent.batch_size = {self.batch_size}")
        if self.dqfd.enabled:
            self._dqfd_fits()
        return self

    def _dqfd_fits(self) -> None:
        if self.n_steps < 2:
            raise ValueError(f"agent.dqfd.enabled needs agent.n_steps >= 2 (got {self.n_steps}): DQfD's n-step "
                             "TD term would repeat its 1-step term")
        rows = self.dqfd_rows
        if not 1 <= rows <= self.batch_size - 1:
            raise ValueError(f"agent.dqfd.demo_fraction = {self.dqfd.demo_fraction} gives {rows} demonstration "
                             f"rows of agent.batch_size = {self.batch_size}; allowed: a fraction giving 1 to "
                             f"{self.batch_size - 1} rows (round(demo_fraction * batch_size))")

    @property
    def dqfd_rows(self) -> int:
        """Demonstration rows of a DQfD gradient batch (the rest are the agent's own transitions)."""
        return round(self.dqfd.demo_fraction * self.batch_size)


class TrainConfig(Strict):
    episodes: int = Field(6000, gt=0, lt=1_000_000)
    num_envs: int = Field(2, gt=0, le=16)
    checkpoint_every: int = Field(50, gt=0)
    """Write the resume state every this many finished episodes."""


class EvaluateConfig(Strict):
    episodes: int = Field(100, gt=0)
    env_seed: int = Field(900_000_000, ge=0)
    """Held-out env seeds are env_seed, env_seed + 1, ...; disjoint from every training seed."""
    num_envs: int = Field(2, gt=0, le=16)
    bootstrap_resamples: int = Field(2000, ge=100)

    @property
    def env_seeds(self) -> list[int]:
        """The held-out env seeds of the evaluation episodes (also the reference policies')."""
        return held_out_seeds(self.env_seed, self.episodes)


class RolloutConfig(Strict):
    episodes: int = Field(50, gt=0)
    env_seed: int = Field(950_000_000, ge=0)
    """Held-out env seeds env_seed, env_seed + 1, ... (disjoint from every training seed)."""
    render_episodes: int = Field(2, ge=0)
    """Render (and make an attention video of) the first this many episodes."""
    num_envs: int = Field(2, gt=0, le=16)
    """Envs (one process each) playing the unrendered episodes in parallel."""
    seconds_per_frame: float = Field(1.0, gt=0.0)

    @property
    def env_seeds(self) -> list[int]:
        """The held-out env seeds of the recorded episodes."""
        return held_out_seeds(self.env_seed, self.episodes)




class DemonstrationsConfig(Strict):
    """Clairvoyant-planner episodes recorded step by step (egolens.demonstrations): behaviour cloning's
    targets and DQfD's demonstrations. Played with `reference.replan` on `reference.processes` workers."""

    episodes: int = Field(120, gt=0, lt=10_000_000)
    """Planner episodes (about 15 s each on one core: 120 take ~15 min on 2 idle cores)."""
    env_seed: int = Field(800_000_000, ge=0)
    """Their env seeds are env_seed, env_seed + 1, ...: disjoint from every training and held-out seed."""

    @property
    def env_seeds(self) -> list[int]:
        """The env seeds of the demonstration episodes."""
        return held_out_seeds(self.env_seed, self.episodes)


class ImitationConfig(Strict):
    """Behaviour cloning of the demonstrations by the reference network (egolens.imitation): the
    representation bound, a diagnostic beside the reference policies, never the study's agent."""

    epochs: int = Field(200, gt=0)
    """Passes over every demonstration step."""
    batch_size: int = Field(64, gt=0)
    """Steps per Adam step (the last batch of an epoch may be smaller)."""
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)


class ReferenceConfig(Strict):
    """Reference policies on evaluate's held-out episodes (egolens.policies): constant actions, a
    rule-based driver (thresholds below) and the clairvoyant planner (the ceiling)."""

    ttc_threshold: float = Field(3.0, gt=0.0)
    """s: the rule-based driver yields to a vehicle on a crossing path whose time to collision is below this."""
    horizon: float = Field(5.0, gt=0.0)
    """s: look-ahead of the constant-velocity paths of the rule-based driver's crossing test."""
    collision_radius: float = Field(5.0, gt=0.0)
    """m: gap counted as a collision by the rule-based driver."""
    min_ego_speed: float = Field(4.5, ge=0.0)
    """m/s: the speed the rule-based driver assumes for the ego when it goes."""
    lane_half_width: float = Field(2.0, gt=0.0)
    """m: a vehicle ahead in the ego's lane (within this lateral offset) counts as a threat too."""
    replan: Literal["after_slower", "every_step", "never"] = "after_slower"
    """When the planner searches again from the real state (egolens.policies.plan_episode; after_slower
    chooses the same actions as every_step at a fraction of the cost)."""
    processes: int = Field(2, gt=0, le=16)
    """Worker processes the planner's episodes are split over."""
    bootstrap_resamples: int = Field(2000, ge=100)


class Params(Strict):
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    env: EnvConfig = EnvConfig()
    agent: AgentConfig = AgentConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    rollout: RolloutConfig = RolloutConfig()
    scene: SceneConfig = SceneConfig()
    circuits: CircuitsConfig = CircuitsConfig()
    attributions: AttributionsConfig = AttributionsConfig()
    neurons: NeuronsConfig = NeuronsConfig()
    interventions: InterventionsConfig = InterventionsConfig()
    reference: ReferenceConfig = ReferenceConfig()
    demonstrations: DemonstrationsConfig = DemonstrationsConfig()
    imitation: ImitationConfig = ImitationConfig()

    @field_validator("seeds")
    @classmethod
    def _seeds_valid(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must not repeat")
        if any(not 0 <= s < 800 for s in seeds):
            raise ValueError("seeds must lie in [0, 800) so training env seeds stay below evaluate.env_seed")
        return seeds

    @model_validator(mode="after")
    def _held_out(self) -> Params:
        train_top = (max(self.seeds) + 1) * SEED_STRIDE
        for key, start in (("evaluate.env_seed", self.evaluate.env_seed), ("rollout.env_seed", self.rollout.env_seed),
                           ("interventions.env_seed", self.interventions.env_seed)):
            if start < train_top:
                raise ValueError(f"{key} = {start} overlaps the training env seeds [0, {train_top}); "
                                 f"allowed: >= {train_top}")
        self._demonstrations_apart(train_top)
        if self.rollout.render_episodes > self.rollout.episodes:
            raise ValueError(f"rollout.render_episodes = {self.rollout.render_episodes} must be <= "
                             f"rollout.episodes = {self.rollout.episodes}")
        smallest = min(self.agent.embedding_layers + self.agent.output_layers)
        if 2 * self.interventions.top_k > smallest:
            raise ValueError(f"interventions.top_k = {self.interventions.top_k} leaves too few units for random "
                             f"control sets in a layer of {smallest}; allowed: <= {smallest // 2}")
        return self

    def _demonstrations_apart(self, train_top: int) -> None:
        """The demonstration episodes share no env seed with training or with any held-out episode (BC and
        DQfD would otherwise see the very episodes they are judged on)."""
        demos = self.demonstrations
        if demos.env_seed < train_top:
            raise ValueError(f"demonstrations.env_seed = {demos.env_seed} overlaps the training env seeds "
                             f"[0, {train_top}); allowed: >= {train_top}")
        end = demos.env_seed + demos.episodes
        for key, start, count in (("evaluate", self.evaluate.env_seed, self.evaluate.episodes),
                                  ("rollout", self.rollout.env_seed, self.rollout.episodes),
                                  ("interventions", self.interventions.env_seed,
                                   self.interventions.closed_loop_episodes)):
            if start < end and demos.env_seed < start + count:
                raise ValueError(f"demonstrations.env_seed = {demos.env_seed} with demonstrations.episodes = "
                                 f"{demos.episodes} overlaps the {key} stage's held-out env seeds "
                                 f"[{start}, {start + count}); "
                                 f"allowed: an env_seed whose {demos.episodes} seeds end at or below {start} or "
                                 f"start at or above {start + count}")


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key (value {error['input']!r}); check its spelling"
    if kind == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "float_type" and isinstance(error["input"], str):
        message += " (YAML reads a number like 1e-3 as a string: write 1.0e-3 or 0.001)"
    if kind == "value_error" and isinstance(error["input"], dict):
        return message  # a check across keys of a section: the message names them
    return f"{key} = {error['input']!r}: {message}"


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def validate_params(raw: Any) -> Params:
    """Validate a parsed params mapping; raise ParamsError naming every bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = []
        for error in err.errors():
            line = _describe(error)
            if error["type"] == "extra_forbidden":
                line += f"; allowed keys here: {', '.join(_allowed_keys(Params, error['loc']))}"
            lines.append(line)
        raise ParamsError("invalid params:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError (with the key named) if it is malformed."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: no such params file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    try:
        return validate_params(raw)
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (used to match a resume state to its run)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
