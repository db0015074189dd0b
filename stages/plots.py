"""plots: every figure of the study (egolens.names.FIGURES) from the per-seed tables and the first
seed's trained rollout, written to results/figures/<name>.png (same tables => same bytes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from tqdm import tqdm

from egolens import names, plots
from egolens.config import Params
from egolens.figures import figure_png
from stages import DATA, RESULTS, load_rollout, seed_results, study_args
from stages.outputs import write_bytes

FIGURES_DIR = RESULTS / "figures"


def seed_table(params: Params, relative: str, sep: str = ",") -> pd.DataFrame:
    """results/seeds/seed<N>/<relative> of every seed, concatenated with a `seed` column."""
    return pd.concat([pd.read_csv(seed_results(seed) / relative, sep=sep).assign(seed=seed) for seed in params.seeds],
                     ignore_index=True)


def evaluation_table(params: Params) -> pd.DataFrame:
    return plots.evaluation_rows({seed: json.loads((seed_results(seed) / names.SUMMARIES["evaluate"]).read_text())
                                  for seed in params.seeds})


def reference_table() -> pd.DataFrame:
    return plots.reference_rows(json.loads((RESULTS / "reference" / "metrics.json").read_text()))


def scene_figure(params: Params) -> Figure:
    seed = params.seeds[0]
    arrays = load_rollout(seed, "trained", ("episode", "obs", "attention", "action", "q", "vehicle_id"))
    ranks = names.head_ranks(pd.read_csv(seed_results(seed) / "interventions/closed_loop.csv"))
    return plots.attention_scene(**plots.first_episode_scene(arrays, params.env, seed), ranks=ranks)


def head_ranks(params: Params) -> dict[int, dict[int, int]]:
    """seed -> head index -> closed-loop rank (the report's head_rank<r> naming)."""
    return {seed: names.head_ranks(pd.read_csv(seed_results(seed) / "interventions/closed_loop.csv"))
            for seed in params.seeds}


def builders(params: Params) -> dict[str, Callable[[], Figure]]:
    """One figure builder per entry of names.FIGURES (tables are read when the figure is built)."""
    first = seed_results(params.seeds[0])

    def circuits(draw: Callable[..., Figure]) -> Figure:
        return draw(seed_table(params, "circuits/feature_circuits.csv"),
                    pd.read_csv(first / "circuits/head_matrices.csv"), head_ranks(params))

    def steps_of_first_seed() -> pd.DataFrame:
        return pd.concat([pd.read_csv(DATA / f"seed{params.seeds[0]}" / f"steps_{model}.csv").assign(model=model)
                          for model in names.MODELS], ignore_index=True)

    return {
        "qk_circuits": lambda: circuits(plots.qk_circuits),
        "ov_circuits": lambda: circuits(plots.ov_circuits),
        "embedding_composites": lambda: plots.embedding_composites(pd.read_csv(first / "circuits/composites.csv")),
        "ig_features": lambda: plots.ig_features(seed_table(params, "attributions/ig_features.csv")),
        "layer_conductance": lambda: plots.layer_conductance(seed_table(params, "attributions/layer_conductance.csv")),
        "neuron_conductance": lambda: plots.neuron_conductance(
            pd.read_csv(first / "attributions/neuron_conductance.csv")),
        "neuron_activations": lambda: plots.neuron_activations(pd.read_csv(first / "neurons/over_time.csv"),
                                                               steps_of_first_seed()),
        "attention_scene": lambda: scene_figure(params),
        "logit_lens": lambda: plots.logit_lens(seed_table(params, "neurons/lens_summary.csv"),
                                               seed_table(params, "neurons/tuned_lens.csv"), ranks=head_ranks(params),
                                               controls=seed_table(params, "neurons/lens_controls.csv")),
        "ablations": lambda: plots.ablations(seed_table(params, "interventions/closed_loop.csv"),
                                             ranks=head_ranks(params)),
        "patching": lambda: plots.patching(seed_table(params, "interventions/patching.csv"),
                                           seed_table(params, "interventions/path_patching.csv"),
                                           ranks=head_ranks(params)),
        "learning_curves": lambda: plots.learning_curves(
            seed_table(params, "train/plots/metrics/return.tsv", sep="\t"),
            reference=plots.reference_returns(reference_table())),
        "evaluation": lambda: plots.evaluation(evaluation_table(params), reference_table()),
        "designed_scenes": lambda: plots.designed_scenes(seed_table(params, "scenes/scenes.csv"),
                                                         seed_table(params, "scenes/heads.csv")),
        "attention_vs_attribution": lambda: plots.attention_vs_attribution(
            seed_table(params, "attributions/agreement.csv"), seed_table(params, "attributions/attention_facts.csv"),
            seed_table(params, "attributions/ranking_baselines.csv"), head_ranks(params)),
    }


def write_figures(params: Params, out: Path = FIGURES_DIR) -> None:
    """Render every figure to out/<name>.png atomically; remove PNGs of figures no longer drawn."""
    figures = builders(params)
    if set(figures) != set(names.FIGURES):
        raise RuntimeError(f"builders and names.FIGURES disagree: {sorted(set(figures) ^ set(names.FIGURES))}")
    for name, build in tqdm(figures.items(), desc="figures", unit="fig"):
        write_bytes(out / f"{name}.png", figure_png(build()))
    for stale in sorted(out.glob("*.png")):
        if stale.stem not in figures:
            stale.unlink()


def main() -> None:
    params = study_args(__doc__)
    matplotlib.use("Agg")
    write_figures(params)


if __name__ == "__main__":
    main()
