"""Named presets: every override names a real key, and the result is a valid study."""

from __future__ import annotations

import pytest

import presets
from egolens.config import validate_params
from tests.conftest import ROOT, default_params

NAMES = sorted(p.stem for p in (ROOT / "presets").glob("*.yaml"))


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_overrides_existing_keys_and_validates(name):
    changes = presets.overrides(name)
    params = presets.apply(default_params(), changes)
    validated = validate_params(params)
    for dotted, value in changes.items():
        node = validated.model_dump()
        for key in dotted.split("."):
            node = node[key]
        assert node == value, dotted


def test_unknown_keys_and_presets_are_refused():
    with pytest.raises(KeyError, match="no key 'episode'"):
        presets.apply(default_params(), {"train.episode": 3})
    with pytest.raises(KeyError, match="no section 'trian'"):
        presets.apply(default_params(), {"trian.episodes": 3})
    with pytest.raises(SystemExit, match="presets: faithful, paper, paper_period, tiny"):
        presets.overrides("nope")


def test_set_args_are_the_dvc_exp_run_overrides():
    assert presets.set_args({"seeds": [0, 1, 2], "agent.loss": "smooth_l1", "agent.timeout_terminal": True}) == [
        "-S", "seeds=[0, 1, 2]", "-S", "agent.loss=smooth_l1", "-S", "agent.timeout_terminal=true"]
