"""The headline numbers of the attributions study (its `summary.json`), read off its tables.

`summarize` is a pure function of the tables `attribution_study.combine` returns: completeness of
integrated gradients per baseline and quantity, of layer conductance at every cut, Shapley
efficiency, attention–attribution agreement per head, deletion/insertion areas per order,
attention vs scene facts per head, and the randomisation check's flags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from egolens.analysis.attribution.attribution_study import BASELINES, FACTS, ORDER_IG, QUANTITIES
from egolens.analysis.attribution.attribution_tables import step_summary
from egolens.analysis.attribution.faithfulness import completeness_stats

EFFICIENCY_KEYS = ("max_abs_error", "median_rel_error", "max_rel_error", "n_tiny")
"""The completeness statistics of the Shapley values' efficiency the summary keeps."""


def cut_key(layer: str) -> str:
    """The summary key of a cut layer's conductance completeness: `attention_layer.hook_resid` ->
    `hook_resid`, `output_layer.hook_post.0` -> `output_hook_post_0`."""
    module, _, hook = layer.partition(".")
    prefix = "" if module == "attention_layer" else f"{module.removesuffix('_layer')}_"
    return prefix + hook.replace(".", "_")


def model_summary(tables: Mapping[str, pd.DataFrame], label: str) -> dict:
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
                 .query("statistic == 'step_mean'").set_index("head") for value in ("spearman", "top1_match")}
        agreement[method] = {f"head{h}": {"spearman_mean": means["spearman"].loc[h, "spearman"],
                                          "n_steps": means["spearman"].loc[h, "n"],
                                          "top1_rate": means["top1_match"].loc[h, "top1_match"]}
                             for h in means["spearman"].index}
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
            "agreement": agreement, **curves, "attention_facts": attention}


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


def summarize(tables: Mapping[str, pd.DataFrame], models: Sequence[str]) -> dict:
    """summary.json of the attributions study: {model: `model_summary`, ..., "sanity": `sanity_summary`}.

    tables: name -> every network's rows (`attribution_study.combine`), with `shapley_efficiency`
    and `sanity` besides the written tables; models: the networks' labels, in the order wanted.
    """
    summary = {model: model_summary(tables, model) for model in models}
    summary["sanity"] = sanity_summary(tables["sanity"])
    return summary
