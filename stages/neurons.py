"""neurons@seed: activation statistics, neuron–fact correlations and the semantic dictionary of
the embedding and output-MLP neurons, logit and tuned lenses, and feature visualisations
(an optimised observation beside the top recorded step) of the trained and untrained networks."""

from __future__ import annotations

import shutil

import matplotlib
import pandas as pd
from tqdm import tqdm

from egolens.analysis.reading import neuron_stats, neuron_study
from egolens.figures import FEATURE_VIS_DPI, figure_png
from stages import NETWORKS, load_rollout, seed_args, seed_results
from stages.networks import deterministic, load_net
from stages.outputs import write_bytes, write_csv, write_json


def main() -> None:
    params, seed = seed_args(__doc__)
    matplotlib.use("Agg")
    deterministic(seed)
    out = seed_results(seed) / "neurons"
    shutil.rmtree(out, ignore_errors=True)
    parts: dict[str, list[pd.DataFrame]] = {}
    for model in NETWORKS:
        net = load_net(params, seed, model)
        arrays = load_rollout(seed, model)
        tables, figures = neuron_study.network_tables(model, net, arrays, params, seed,
                                                      lambda items, desc: tqdm(items, desc=desc))
        for file, fig in figures.items():
            write_bytes(out / file, figure_png(fig, FEATURE_VIS_DPI))
        for name, table in tables.items():
            parts.setdefault(name, []).append(table)
    tables = {name: pd.concat(tables, ignore_index=True) for name, tables in parts.items()}
    for name, table in tables.items():
        write_csv(out / f"{name}.csv", table)
    write_json(out / "summary.json", neuron_stats.summarize(tables))


if __name__ == "__main__":
    main()
