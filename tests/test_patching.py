"""Patching on tiny hand-made networks: patching the whole clean activation restores the clean
output and patching nothing restores nothing, path patching separates the key path from the value
path, pairs are kept by the size of the metric change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egolens.analysis.intervening import interventions as iv
from egolens.analysis.intervening import patching
from egolens.hooks import hooks, run_with_cache, run_with_hooks
from egolens.sites import K_SITE, PATTERN, RESID, V_SITE, Z
from egolens.vocabulary import present_others
from tests.conftest import random_obs, tiny_net

H = 2


@pytest.fixture
def net():
    return tiny_net(heads=H)


def pair(seed=1, batch=6):
    """Clean observations and a corrupted copy with the first present other vehicle moved closer."""
    clean = random_obs(batch, seed=seed)
    present = present_others(clean)
    target = torch.where(present.any(1), present.float().argmax(1), torch.full((batch,), -1)).long()
    assert (target > 0).all()
    return clean, iv.move_closer(clean, target, 0.3), target


def test_patching_the_whole_clean_activation_restores_the_clean_output_exactly(net):
    clean, corr, target = pair()
    q_clean = net(clean).detach()
    for name in (RESID, "output_layer.hook_post.0"):
        with torch.no_grad():
            source = run_with_cache(net, clean, [name])[1][name]
            patched = run_with_hooks(net, corr, {name: patching.patch_hook(source)})
        torch.testing.assert_close(patched, q_clean, rtol=0, atol=0)
    sites = [patching.Site(RESID, (), "resid"), patching.Site("output_layer.hook_post.0", (), "hidden")]
    table = patching.activation_patching(net, clean, corr, sites, target)
    np.testing.assert_allclose(table["restored"], 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(table["m_patched"], table["m_clean"], rtol=0, atol=0)


def test_patching_nothing_restores_nothing(net):
    clean, corr, target = pair(seed=2)
    nothing = [patching.Site(RESID, (slice(0, 0),), "resid"),                           # an empty slice
               patching.Site(K_SITE, (0, slice(0, 0)), "key", head=0)]
    table = patching.activation_patching(net, clean, corr, nothing, target)
    assert (table["restored"] == 0.0).all() and (table["m_patched"] == table["m_corr"]).all()
    # an entity absent in both runs is masked: patching its embedding restores nothing either
    absent = int(torch.nonzero(clean[0, :, 0] < 0.5)[0])
    site = patching.Site("others_embedding.hook_post.1", (absent - 1,), "embedding", entity=absent)
    table = patching.activation_patching(net, clean[:1], corr[:1], [site])
    assert float(table["restored"].iloc[0]) == 0.0 and not table["entity_present"].iloc[0]


def test_restored_fraction_by_hand():
    frac = patching.restored_fraction(np.array([1.0, 3.0, 2.0, 5.0]), np.array([3.0, 3.0, 3.0, 5.0]),
                                np.array([1.0, 1.0, 1.0, 5.0]))
    np.testing.assert_allclose(frac[:3], [0.0, 1.0, 0.5])
    assert np.isnan(frac[3])


def test_patching_sites_and_roles(net):
    clean, corr, target = pair(seed=3, batch=4)
    sites = patching.patching_sites(net, entities=15)
    classes = {s.site_class for s in sites}
    assert classes == {"embedding", "query", "key", "value", "scores", "pattern", "z", "combined", "resid",
                       "hidden", "neuron"}
    assert sum(s.site_class == "key" for s in sites) == H * 16 and sum(s.site_class == "neuron" for s in sites) == 8
    table = patching.activation_patching(net, clean, corr, sites, target)
    assert len(table) == 4 * len(sites)
    rows = table[(table.site_class == "embedding") & (table.site == "others_embedding.hook_post.1")
                 & (table.role == "target")]
    assert len(rows) == 4                                   # the changed vehicle's own embedding, each pair
    np.testing.assert_allclose(rows["restored"], 1.0, atol=1e-5)  # it is the only thing that differs
    ego = table[(table.entity == 0) & (table.site_class == "embedding")]
    np.testing.assert_allclose(ego["restored"], 0.0, atol=1e-6)  # the ego's embedding is the same in both


def test_key_only_patch_changes_only_the_pattern_and_value_only_only_what_is_read(net):
    clean, corr, target = pair(seed=4)
    _, c_clean = run_with_cache(net, clean)
    _, c_corr = run_with_cache(net, corr)
    head = 1
    key = {K_SITE: patching.patch_hook(c_clean[K_SITE], (head, target))}
    with hooks(net, key):
        _, after = run_with_cache(net, corr)
    assert torch.equal(after[V_SITE], c_corr[V_SITE])                          # values untouched
    assert torch.equal(after[PATTERN][:, 1 - head], c_corr[PATTERN][:, 1 - head])
    assert not torch.allclose(after[PATTERN][:, head], c_corr[PATTERN][:, head])   # the pattern moved
    b = torch.arange(6)
    torch.testing.assert_close(after[K_SITE][b, head, target], c_clean[K_SITE][b, head, target])
    value = {V_SITE: patching.patch_hook(c_clean[V_SITE], (head, target))}
    with hooks(net, value):
        _, after = run_with_cache(net, corr)
    assert torch.equal(after[PATTERN], c_corr[PATTERN])                       # where it looks: unchanged
    assert torch.equal(after[Z][:, 1 - head], c_corr[Z][:, 1 - head])
    assert not torch.allclose(after[Z][:, head], c_corr[Z][:, head])           # what it reads: changed
    # z moves by exactly the pattern weight times the value difference
    a = c_corr[PATTERN][b, head, 0, target]
    dv = c_clean[V_SITE][b, head, target] - c_corr[V_SITE][b, head, target]
    torch.testing.assert_close(after[Z][:, head, 0] - c_corr[Z][:, head, 0], a[:, None] * dv)


def test_path_patching_table(net):
    clean, corr, target = pair(seed=5, batch=4)
    table = patching.path_patching(net, clean, corr, target)
    assert set(table["path"]) == {"key", "value", "key_value", "sender"}              # no ego sender: no query
    sender = table[table.path == "sender"]
    np.testing.assert_allclose(sender["restored"], 1.0, atol=1e-5)                  # the only change, restored
    assert (table[table.path != "sender"]["head"] >= 0).all()
    # the ego as sender (the ego slower): query paths appear, the sender path restores everything
    slow = iv.slow_ego(clean, 0.3)
    table = patching.path_patching(net, clean, slow, torch.zeros(4, dtype=torch.long))
    assert set(table["path"]) == set(patching.PATHS)
    sender = table[table.path == "sender"]
    np.testing.assert_allclose(sender["m_patched"], sender["m_clean"], rtol=0, atol=1e-6)
    # a batch mixing ego and vehicle senders: query rows only for the ego pairs
    mixed = torch.cat([corr[:2], slow[2:]])
    sender_ids = torch.cat([target[:2], torch.zeros(2, dtype=torch.long)])
    table = patching.path_patching(net, clean, mixed, sender_ids)
    assert set(table[table.path == "query"]["pair"]) == {2, 3}
    np.testing.assert_allclose(table[table.path == "sender"]["restored"], 1.0, atol=1e-5)


def test_build_pairs_filters_by_the_metric_change(net):
    obs = random_obs(20, seed=10)
    _, cache = run_with_cache(net, obs, [PATTERN])
    crossing = present_others(obs)
    crossing[:10] = False
    pairs = patching.build_pairs(net, obs, "vehicle_removed", cache[PATTERN], crossing, max_pairs=100,
                                 min_change=0.0)
    assert (pairs.step >= 10).all() and len(pairs.step) == 10
    assert (pairs.corrupted[torch.arange(10), pairs.target, 0] == 0).all()
    gap = (iv.q_metric(net(obs)) - iv.q_metric(net(iv.slow_ego(obs)))).abs().detach()
    threshold = float(gap.median())
    pairs = patching.build_pairs(net, obs, "ego_slower", cache[PATTERN], max_pairs=100, min_change=threshold)
    assert set(pairs.step.tolist()) == set(torch.nonzero(gap >= threshold).squeeze(1).tolist())
    few = patching.build_pairs(net, obs, "vehicle_closer", cache[PATTERN], max_pairs=3, min_change=0.0)
    assert len(few.step) == 3 and few.step[0] == 0 and few.step[-1] == 19
    with pytest.raises(ValueError, match="kind"):
        patching.build_pairs(net, obs, "nope", cache[PATTERN])
