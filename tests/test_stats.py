"""The study's statistics against hand computations and published tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from egolens.stats import (
    bootstrap_ci,
    cluster_bootstrap_ci,
    crossed_bootstrap_ci,
    equivalence_test,
    nested_bootstrap_ci,
    paired_bootstrap_ci,
    paired_crossed_ci,
    spearman,
    spearman_columns,
    student_t_quantile,
    t_interval,
)


@pytest.mark.parametrize(("p", "df", "expected"), [(0.975, 1, 12.7062), (0.975, 2, 4.30265), (0.975, 4, 2.77645),
                                                   (0.95, 10, 1.81246), (0.975, 30, 2.04227)])
def test_student_t_quantiles_match_the_tables(p, df, expected):
    assert student_t_quantile(p, df) == pytest.approx(expected, abs=2e-4)


def test_t_interval_is_mean_plus_minus_t_sd_over_root_n_and_skips_nan():
    values = [1.0, 2.0, 4.0, math.nan]
    mean, low, high, sd = t_interval(values)
    x = np.array([1.0, 2.0, 4.0])
    expected_sd = math.sqrt(((x - x.mean()) ** 2).sum() / 2)
    assert mean == pytest.approx(7 / 3) and sd == pytest.approx(expected_sd)
    assert high - mean == pytest.approx(4.302653 * expected_sd / math.sqrt(3), rel=1e-4)
    assert mean - low == pytest.approx(high - mean)
    single = t_interval([5.0])
    assert single[0] == 5.0 and all(math.isnan(v) for v in single[1:])
    assert all(math.isnan(v) for v in t_interval([]))


def test_paired_bootstrap_ci_on_hand_data():
    treated = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    control = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    mean, low, high = paired_bootstrap_ci(treated, control, 2000, seed=0)
    assert mean == pytest.approx(0.5) and 0.0 <= low < 0.5 < high <= 1.0
    assert (mean, low, high) == bootstrap_ci(treated - control, 2000, 0)
    # a constant difference has no spread however different the two samples are
    assert paired_bootstrap_ci(np.arange(5.0) + 2, np.arange(5.0), 500, 1) == (2.0, 2.0, 2.0)
    # pairing matters: the same two samples unpaired would have a wide interval
    _, low_u, high_u = bootstrap_ci(np.arange(5.0) + 2, 500, 1)
    assert high_u - low_u > 1.0
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap_ci(np.ones(3), np.ones(4), 100, 0)


def test_spearman_by_hand_and_nan_for_a_constant_side():
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1], [2]))


def test_spearman_columns_is_spearman_of_each_column():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(20, 3))
    acts[:, 2] = 1.0
    fact = rng.normal(size=20)
    rho = spearman_columns(acts, fact)
    assert rho[:2] == pytest.approx([spearman(acts[:, 0], fact), spearman(acts[:, 1], fact)])
    assert math.isnan(rho[2])


def test_nested_bootstrap_weights_seeds_equally_and_stays_inside_the_unit_interval():
    groups = [np.array([1, 1, 1, 0]), np.array([0, 0, 0, 0, 0, 0, 0, 1]), np.array([1.0])]
    mean, low, high = nested_bootstrap_ci(groups, 2000, seed=0)
    assert mean == pytest.approx((0.75 + 0.125 + 1.0) / 3)
    assert 0.0 <= low < mean < high <= 1.0
    assert nested_bootstrap_ci(groups, 2000, seed=0) == (mean, low, high)


def test_nested_bootstrap_of_one_group_is_the_bootstrap_over_its_units_and_of_constants_a_point():
    one = nested_bootstrap_ci([np.arange(10.0)], 4000, seed=1)
    flat = bootstrap_ci(np.arange(10.0), 4000, seed=2)
    assert one[0] == flat[0]
    assert one[1:] == pytest.approx(flat[1:], abs=0.25)
    assert nested_bootstrap_ci([np.ones(5), np.ones(3)], 200, seed=0) == (1.0, 1.0, 1.0)
    # seeds that disagree widen the interval beyond what either seed's episodes alone give
    spread = nested_bootstrap_ci([np.zeros(50), np.ones(50)], 2000, seed=0)
    assert spread[1] < 0.1 and spread[2] > 0.9
    with pytest.raises(ValueError, match="empty"):
        nested_bootstrap_ci([np.array([])], 10, 0)


# ------------------------------------------------------------------------------ crossed designs, TOST

def test_crossed_bootstrap_of_five_identical_seeds_is_the_single_seed_interval():
    outcomes = np.random.default_rng(3).integers(0, 2, size=100).astype(float)
    single = bootstrap_ci(outcomes, 2000, seed=7)
    crossed = crossed_bootstrap_ci(np.tile(outcomes, (5, 1)), 2000, seed=7)
    np.testing.assert_allclose(crossed, single, atol=1e-12)


def test_the_nested_bootstrap_of_identical_seeds_is_too_narrow_where_the_crossed_one_is_not():
    """Five copies of one seed's outcomes carry one seed's information: nesting treats them as five."""
    outcomes = np.random.default_rng(3).integers(0, 2, size=100).astype(float)
    _, low, high = crossed_bootstrap_ci(np.tile(outcomes, (5, 1)), 2000, seed=7)
    _, n_low, n_high = nested_bootstrap_ci([outcomes] * 5, 2000, seed=7)
    assert (n_high - n_low) < 0.6 * (high - low)


def test_crossed_bootstrap_widens_with_seed_to_seed_spread():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, size=(1, 100)).astype(float)
    spread = np.clip(base + rng.normal(0, 1, size=(5, 1)) * 0.3, 0, 1)
    _, low0, high0 = crossed_bootstrap_ci(np.tile(base, (5, 1)), 2000, seed=1)
    _, low1, high1 = crossed_bootstrap_ci(spread, 2000, seed=1)
    assert high1 - low1 > high0 - low0


def test_paired_crossed_differences_cancel_what_the_episodes_share():
    control = np.random.default_rng(4).normal(size=(1, 80))
    treated = np.tile(control, (3, 1)) + 0.5
    mean, low, high = paired_crossed_ci(treated, control, 500, seed=2)
    assert mean == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)


def test_an_equivalence_test_that_must_pass():
    differences = np.random.default_rng(5).normal(0.0, 0.1, size=400)
    result = equivalence_test(differences, margin=0.05, resamples=2000, seed=3)
    assert result["equivalent"] and -0.05 < result["ci_low"] < result["ci_high"] < 0.05


def test_an_equivalence_test_that_must_fail_on_too_few_episodes_and_reports_what_it_could_detect():
    differences = np.random.default_rng(5).integers(-1, 2, size=50).astype(float)   # outcome changes of 50 episodes
    result = equivalence_test(differences, margin=0.05, resamples=2000, seed=3)
    assert not result["equivalent"]
    sd = differences.std(ddof=1)
    assert result["detectable_effect"] == pytest.approx((1.959964 + 0.841621) * sd / np.sqrt(50))
    assert result["detectable_effect"] > 0.05


def test_an_equivalence_margin_must_be_positive():
    with pytest.raises(ValueError, match="margin"):
        equivalence_test(np.zeros(10), margin=0.0, resamples=100, seed=0)


def test_cluster_bootstrap_with_one_unit_per_cluster_is_the_plain_bootstrap():
    values = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    assert cluster_bootstrap_ci(values, np.arange(7) * 3, 500, 4) == bootstrap_ci(values, 500, 4)


def test_cluster_bootstrap_resamples_whole_clusters():
    # two episodes of unequal length: a resample is either episode twice or both once, so the
    # percentile interval's ends are the two episodes' own means (hand computation)
    values = np.array([1.0, 1.0, 1.0, 0.0])
    clusters = np.array([7, 7, 7, 9])
    mean, low, high = cluster_bootstrap_ci(values, clusters, 2000, 0)
    assert mean == pytest.approx(0.75)
    assert (low, high) == (0.0, 1.0)
    # every cluster alike: nothing varies between resamples
    assert cluster_bootstrap_ci(np.array([1.0, 0.0, 1.0, 0.0]), np.array([0, 0, 1, 1]), 300, 2) == (0.5, 0.5, 0.5)
    # a single cluster: its mean, and no interval (nothing to resample)
    mean, low, high = cluster_bootstrap_ci(np.array([0.0, 1.0, 1.0]), np.zeros(3), 100, 0)
    assert mean == pytest.approx(2 / 3) and math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="one cluster per value"):
        cluster_bootstrap_ci(np.ones(3), np.zeros(2), 100, 0)


def test_an_interval_over_one_unit_is_undefined_so_nothing_is_significant_by_default():
    # one episode (or one cluster, one group of one) cannot be resampled: a zero-width interval
    # there would put any nonzero mean "above 0"; the mean stays, the bounds are NaN
    for expected, (mean, low, high) in ((0.7, bootstrap_ci(np.array([0.7]), 100, 0)),
                                        (1.0, paired_bootstrap_ci(np.array([1.0]), np.array([0.0]), 100, 0)),
                                        (0.7, cluster_bootstrap_ci(np.array([0.7, 0.7]), np.array([3, 3]), 100, 0)),
                                        (0.7, nested_bootstrap_ci([np.array([0.7])], 100, 0)),
                                        (0.7, crossed_bootstrap_ci(np.full((5, 1), 0.7), 100, 0))):
        assert mean == pytest.approx(expected)
        assert math.isnan(low) and math.isnan(high)
    # two units are enough for an interval, even one of zero width (both alike)
    assert bootstrap_ci(np.array([0.7, 0.7]), 100, 0) == pytest.approx((0.7, 0.7, 0.7))
    # and a test of "no effect" on one episode cannot pass
    assert not equivalence_test(np.array([0.0]), 0.1, 100, 0)["equivalent"]
