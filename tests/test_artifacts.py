"""Byte-stable outputs: one JSON form (NaN and inf as null) for every summary and metrics file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from egolens.artifacts import json_safe, json_text


def test_json_safe_makes_plain_numbers_and_null_for_nan_and_inf():
    plain = json_safe({"a": np.float32(0.5), "b": [math.nan, math.inf, np.int64(3)], "c": np.bool_(True),
                       "d": {"e": torch.tensor(2.0), "f": None, "g": False}})
    assert plain == {"a": 0.5, "b": [None, None, 3], "c": 1, "d": {"e": 2.0, "f": None, "g": 0}}
    assert isinstance(plain["b"][2], int) and type(plain["a"]) is float
    with pytest.raises(TypeError):
        json_safe({"x": object()})


def test_json_text_is_indented_plain_json_ending_in_a_newline():
    text = json_text({"b": np.float64(math.nan), "a": [1, 2.5]})
    assert text.endswith("}\n") and json.loads(text) == {"b": None, "a": [1, 2.5]}
    assert text == json_text({"b": math.nan, "a": [1, 2.5]})
