"""egolens.numbers: the one number policy (missing numbers, rounding, CSV floats, rate intervals)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from egolens.artifacts import json_text
from egolens.numbers import FLOAT_FORMAT, csv_text, decimals, rate_interval, significant


def test_a_missing_number_is_none_in_every_rounding_and_null_in_json():
    for value in (math.nan, math.inf, -math.inf, None, np.float32("nan")):
        assert decimals(value, 4) is None and significant(value) is None
    assert json_text({"a": math.nan, "b": decimals(math.nan, 6)}) == '{\n  "a": null,\n  "b": null\n}\n'


def test_rounding_keeps_decimals_or_significant_digits():
    assert decimals(0.123456789, 4) == 0.1235 and decimals(12, 6) == 12.0
    assert significant(0.000123456789) == 0.000123457 and significant(123456789.0) == 123457000.0
    assert significant(2 / 3) == float(FLOAT_FORMAT % (2 / 3))


def test_csv_writes_six_significant_digits_empty_cells_for_missing_and_exact_values_when_asked():
    table = pd.DataFrame({"name": ["a", "b"], "x": [1 / 3, math.nan], "n": [1, 2]})
    assert csv_text(table) == "name,x,n\na,0.333333,1\nb,,2\n"
    rounded = pd.DataFrame({"return": [decimals(1 / 3, 6), 2.0]})
    assert csv_text(rounded, float_format=None) == "return\n0.333333\n2.0\n"


def test_a_rate_interval_never_leaves_the_unit_interval():
    assert rate_interval(-0.0101, 0.238) == (0.0, 0.238)
    assert rate_interval(0.7, 1.2) == (0.7, 1.0)
    assert rate_interval(0.1, 0.2) == (0.1, 0.2)
    low, high = rate_interval(math.nan, math.nan)
    assert math.isnan(low) and math.isnan(high)
