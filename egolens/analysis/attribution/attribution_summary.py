"""The headline numbers of the attributions study (its `summary.json`), read off its tables.

`summarize` is a pure function of the tables `attribution_study.combine` returns: completeness of
integrated gradients per baseline and quantity, of layer conductance at every cut, Shapley
efficiency, attention–attribution agreement per head (with the chance level of its top-1 match) and the
naive rankings' (nearest, lowest time-to-collision) agreement beside it, deletion/insertion areas per order,
attention vs scene facts per head, and the randomisation check's flags; and the paired comparisons on the
same steps (`paired_over_steps`): each head's attention against each naive ranking and its top-1 match
against chance, and each deletion order's area against random orders'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from egolens.analysis.attribution.attribution_study import BASELINES, FACTS, ORDER_IG, QUANTITIES, RANKED_EXPLANATIONS
from egolens.analysis.attribution.attribution_tables import step_summary
from egolens.analysis.attribution.faithfulness import completeness_stats
from egolens.stats import cluster_bootstrap_ci

AGREEMENT_VALUES = ("spearman", "top1_match", "top1_chance")
"""Per-step agreement values averaged over steps (`attention_agreement.attention_attribution_agreement`)."""
EFFICIENCY_KEYS = ("max_abs_error", "median_rel_error", "max_rel_error", "n_tiny")
"""The completeness statistics of the Shapley values' efficiency the summary keeps."""


def cut_key(layer: str) -> str:
    """The summary key of a cut layer's conductance completeness: `attention_layer.hook_resid` ->
    `hook_resid`, `output_layer.hook_post.0` -> `output_hook_post_0`."""
    module, _, hook = layer.partition(".")
    prefix = "" if module == "attention_layer" else f"{module.removesuffix('_layer')}_"
    return prefix + hook.replace(".", "_")


def paired_over_steps(treated: pd.DataFrame, control: pd.DataFrame, value: str, resamples: int, seed: int,
                      control_value: str | None = None) -> dict[str, float]:
    """Mean per-step difference treated − control, with a 95% bootstrap interval over episodes.

    treated, control: per-step rows with `record` (the analysed step, the pairing key), `episode`
    and the value columns; treated has one row per record, control may have several (random orders:
    averaged per record first). treated's `value` is compared with control's `control_value`
    (default `value`) on the records both give a finite value. The interval resamples whole episodes
    (`stats.cluster_bootstrap_ci`): steps of one episode are not independent. Returns diff, ci_low,
    ci_high and n_steps (NaN and 0 when no step is shared).
    """
    a = treated.set_index("record")[value].astype(float)
    b = control.groupby("record")[control_value or value].mean().astype(float)
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    if both.empty:
        return {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n_steps": 0}
    episode = treated.set_index("record").loc[both.index, "episode"].to_numpy()
    diff, low, high = cluster_bootstrap_ci((both["a"] - both["b"]).to_numpy(), np.asarray(episode), resamples, seed)
    return {"diff": diff, "ci_low": low, "ci_high": high, "n_steps": len(both)}


def versus_rankings(agreement: pd.DataFrame, rankings: pd.DataFrame, resamples: int, seed: int) -> dict:
    """Per head of one explanation's `agreement` rows: its per-step Spearman minus each naive ranking's
    (`rankings`: the `ranking_baselines` rows of the same explanation) and its top-1 match minus the
    step's chance level (`chance`), each `paired_over_steps`: {head<h>: {<ranking>: ..., chance: ...}}."""
    out = {}
    for head, group in agreement.groupby("head", sort=True):
        out[f"head{head}"] = {
            **{str(r): paired_over_steps(group, naive, "spearman", resamples, seed)
               for r, naive in rankings.groupby("ranking", sort=True)},
            "chance": paired_over_steps(group, group, "top1_match", resamples, seed, control_value="top1_chance")}
    return out


def model_summary(tables: Mapping[str, pd.DataFrame], label: str, resamples: int = 2000, seed: int = 0) -> dict:
    """The headline numbers of one network (`label` in the tables' `model` column)."""
    def rows(name: str, **where: object) -> pd.DataFrame:
        table = tables[name]
        table = table[table["model"] == label]
        for column, value in where.items():
            table = table[table[column] == value]
        return table

    completeness = {baseline: {quantity: completeness_stats(rows("completeness", method="ig", baseline=baseline,
                                                                 quantity=quantity))
                               for quantity in QUANTITIES}
                    for baseline in BASELINES}
    cuts = rows("completeness", method="layer_conductance")["layer"].unique()
    conductance = {cut_key(layer): completeness_stats(rows("completeness", method="layer_conductance", layer=layer))
                   for layer in cuts}
    efficiency = rows("shapley_efficiency")
    agreement = {}
    for method, baseline in (("ig", "others_zeroed"), ("shapley", "ego_alone")):
        table = rows("agreement", attribution=method, baseline=baseline, quantity="q")
        means = {value: step_summary(table, ["head"], value)
                 .query("statistic == 'step_mean'").set_index("head") for value in AGREEMENT_VALUES}
        agreement[method] = {f"head{h}": {"spearman_mean": means["spearman"].loc[h, "spearman"],
                                          "n_steps": means["spearman"].loc[h, "n"],
                                          "top1_rate": means["top1_match"].loc[h, "top1_match"],
                                          "top1_chance": means["top1_chance"].loc[h, "top1_chance"]}
                             for h in means["spearman"].index}
    rankings: dict = {}
    for method, baseline, quantity in RANKED_EXPLANATIONS:
        table = rows("ranking_baselines", attribution=method, baseline=baseline, quantity=quantity)
        means = {value: step_summary(table, ["ranking"], value)
                 .query("statistic == 'step_mean'").set_index("ranking") for value in AGREEMENT_VALUES}
        rankings[method] = {r: {"spearman_mean": means["spearman"].loc[r, "spearman"],
                                "n_steps": means["spearman"].loc[r, "n"],
                                "top1_rate": means["top1_match"].loc[r, "top1_match"],
                                "top1_chance": means["top1_chance"].loc[r, "top1_chance"]}
                            for r in means["spearman"].index}
    versus = {method: versus_rankings(rows("agreement", attribution=method, baseline=baseline, quantity=quantity),
                                      rows("ranking_baselines", attribution=method, baseline=baseline,
                                           quantity=quantity), resamples, seed)
              for method, baseline, quantity in RANKED_EXPLANATIONS}
    deletion = rows("curves_auc", curve="deletion")
    deletion_vs_random = {order: paired_over_steps(deletion[deletion["order"] == order],
                                                   deletion[deletion["order"] == "random"], "auc_q", resamples, seed)
                          for order in (ORDER_IG, "shapley")}
    auc = step_summary(rows("curves_auc"), ["order", "curve"], "auc_q")
    auc = auc[auc["statistic"] == "step_mean"].set_index(["curve", "order"])["auc_q"]
    curves = {f"{curve}_auc_q": {order: float(auc.loc[(curve, order)]) for order in (ORDER_IG, "shapley", "random")}
              for curve in ("deletion", "insertion")}
    facts = rows("attention_facts").set_index(["head", "fact", "statistic"])["spearman"]
    attention = {f"head{h}": {fact: {statistic: float(facts.loc[(h, fact, statistic)])
                                     for statistic in ("pooled", "step_mean")} for fact in FACTS}
                 for h in sorted(rows("attention_facts")["head"].unique())}
    return {"ig_completeness": completeness,
            "conductance_completeness": conductance,
            "shapley_efficiency": {k: v for k, v in completeness_stats(efficiency).items() if k in EFFICIENCY_KEYS},
            "agreement": agreement, "ranking_baselines": rankings, "attention_vs_rankings": versus, **curves,
            "deletion_vs_random": deletion_vs_random, "attention_facts": attention}


def sanity_summary(table: pd.DataFrame) -> dict:
    """The randomisation check per explanation (`ig_<baseline>`, `shapley_ego_alone`, `attention_head<h>`)
    and level (feature, vehicle): median rank correlations and flags."""
    out: dict = {}
    for (explanation, baseline, level), group in table.groupby(["explanation", "baseline", "level"], sort=True):
        first = group.iloc[0]
        key = explanation if baseline == "none" else f"{explanation}_{baseline}"
        out.setdefault(key, {})[level] = {
            "median_spearman": first["median_spearman"], "median_spearman_abs": first["median_spearman_abs"],
            "flagged": bool(first["flagged"]), "flagged_abs": bool(first["flagged_abs"])}
    return out


def summarize(tables: Mapping[str, pd.DataFrame], models: Sequence[str], resamples: int = 2000, seed: int = 0) -> dict:
    """summary.json of the attributions study: {model: `model_summary`, ..., "sanity": `sanity_summary`}.

    tables: name -> every network's rows (`attribution_study.combine`), with `shapley_efficiency`
    and `sanity` besides the written tables; models: the networks' labels, in the order wanted;
    resamples, seed: the bootstrap of the paired comparisons (`paired_over_steps`).
    """
    summary = {model: model_summary(tables, model, resamples, seed) for model in models}
    summary["sanity"] = sanity_summary(tables["sanity"])
    return summary
