"""The study's figures: one pure function per figure, tidy tables in, a matplotlib Figure out.

Every function takes the tables the stages wrote (the per-seed ones concatenated with a `seed`
column where a figure spans seeds) and only draws: no file I/O, no analysis beyond the means,
intervals and orderings a figure needs to show its table. `egolens.names.FIGURES` maps each
figure's file stem (the name of the function that draws it) to its caption;
`egolens.figures.figure_png` renders a figure to PNG bytes that depend only on its content.

Intervals: "95% t-interval over seeds" is mean ± t(0.975, n−1)·sd/√n of the per-seed values
(`t_interval`); interval columns stored in a table (bootstrap CIs over episodes or pairs) are
drawn as stored.
"""


from __future__ import annotations

from egolens.plots.attribution import attention_vs_attribution, ig_features, layer_conductance, neuron_conductance
from egolens.plots.circuits import CIRCUIT_VIEWS, embedding_composites, ov_circuits, qk_circuits
from egolens.plots.driving import (
    EVALUATION_METRICS,
    SWEEP_METRICS,
    evaluation,
    evaluation_rows,
    learning_curves,
    recipe_sweep,
    reference_returns,
    reference_rows,
)
from egolens.plots.interventions import ablation_label, ablations, patching
from egolens.plots.neurons import logit_lens, neuron_activations
from egolens.plots.scenes import (
    LABEL_SIZE,
    SCENE_POINTS,
    SCENE_STEPS,
    attention_scene,
    first_episode_scene,
    label_offsets,
)
from egolens.plots.style import MODEL_COLOURS, REFERENCE_STYLES, t_interval

__all__ = [
    "CIRCUIT_VIEWS",
    "EVALUATION_METRICS",
    "LABEL_SIZE",
    "MODEL_COLOURS",
    "REFERENCE_STYLES",
    "SCENE_POINTS",
    "SCENE_STEPS",
    "SWEEP_METRICS",
    "ablation_label",
    "ablations",
    "attention_scene",
    "attention_vs_attribution",
    "embedding_composites",
    "evaluation",
    "evaluation_rows",
    "first_episode_scene",
    "ig_features",
    "label_offsets",
    "layer_conductance",
    "learning_curves",
    "logit_lens",
    "neuron_activations",
    "neuron_conductance",
    "ov_circuits",
    "patching",
    "qk_circuits",
    "recipe_sweep",
    "reference_returns",
    "reference_rows",
    "t_interval",
]
