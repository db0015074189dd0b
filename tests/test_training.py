"""What identifies a training run: options that are off leave a run's identity (and so the bytes of
its checkpoints and its resume fingerprint) as they were before the option existed."""

from __future__ import annotations

import copy

from egolens.config import validate_params
from egolens.training import run_identity
from tests.conftest import default_params

NINE_FEATURES = ["presence", "x", "y", "vx", "vy", "cos_h", "sin_h", "cos_d", "sin_d"]


def test_options_that_are_off_are_not_part_of_the_run_identity():
    identity = run_identity(validate_params(default_params()))
    assert "observe_intentions" not in identity["env"]
    assert "exploration" not in identity["agent"]


def test_options_that_are_on_are_part_of_the_run_identity():
    raw = copy.deepcopy(default_params())
    raw["env"].update(features=NINE_FEATURES, observe_intentions=True)
    raw["agent"]["exploration"] = {"duration": "zeta", "zeta_mu": 2.0, "max_duration": 10}
    identity = run_identity(validate_params(raw))
    assert identity["env"]["observe_intentions"] is True
    assert identity["agent"]["exploration"] == {"duration": "zeta", "zeta_mu": 2.0, "max_duration": 10}


def test_zeta_parameters_change_the_identity_only_when_zeta_exploration_is_used():
    raw = copy.deepcopy(default_params())
    raw["agent"]["exploration"]["max_duration"] = 3
    assert run_identity(validate_params(raw)) == run_identity(validate_params(default_params()))
