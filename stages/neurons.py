"""neurons@seed: activation statistics, neuron–fact correlations and the semantic dictionary of
the embedding and output-MLP neurons, logit and tuned lenses, and feature visualisations
(an optimised observation beside the top recorded step) of the trained and untrained networks."""

from __future__ import annotations

import shutil

import matplotlib
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from egolens import checkpoint
from egolens.analysis import neuron_study, neurons
from egolens.artifacts import json_text
from egolens.figures import FEATURE_VIS_DPI, figure_png
from stages import DATA, NETWORKS, load_net, seed_args, seed_results


def main() -> None:
    params, seed = seed_args(__doc__)
    matplotlib.use("Agg")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out = seed_results(seed) / "neurons"
    shutil.rmtree(out, ignore_errors=True)
    parts: dict[str, list[pd.DataFrame]] = {}
    for model in NETWORKS:
        net = load_net(params, seed, model)
        with np.load(DATA / f"seed{seed}" / f"rollouts_{model}.npz") as npz:
            arrays = {name: npz[name] for name in npz.files}
        tables, figures = neuron_study.network_tables(model, net, arrays, params, seed,
                                                      lambda items, desc: tqdm(items, desc=desc))
        for file, fig in figures.items():
            with checkpoint.atomic_path(out / file) as tmp:
                tmp.write_bytes(figure_png(fig, FEATURE_VIS_DPI))
        for name, table in tables.items():
            parts.setdefault(name, []).append(table)
    tables = {name: pd.concat(tables, ignore_index=True) for name, tables in parts.items()}
    for name, table in tables.items():
        checkpoint.atomic_write_text(out / f"{name}.csv", table.to_csv(index=False, float_format="%.6g"))
    checkpoint.atomic_write_text(out / "summary.json", json_text(neurons.summarize(tables)))


if __name__ == "__main__":
    main()
