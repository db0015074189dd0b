"""Figures drawn from small hand-made tables: what is plotted equals an independent computation."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from egolens import names, plots
from egolens.config import EnvConfig
from egolens.figures import figure_png
from egolens.scene import denormalize

SEEDS = (0, 1, 2)
T975_2 = 4.302653  # Student t(0.975, df=2)
FEATURES = ["presence", "x", "y"]


def hand_interval(values: np.ndarray) -> tuple[float, float]:
    half = T975_2 * np.std(values, ddof=1) / np.sqrt(len(values))
    return float(np.mean(values) - half), float(np.mean(values) + half)


def data_axes(fig: Figure) -> list[Axes]:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def interval_of(ax: Axes, x: float) -> tuple[float, float]:
    """(low, high) of the vertical error bar drawn at x (seaborn draws it as one Line2D)."""
    for line in ax.lines:
        xy = line.get_xydata()
        xy = xy[~np.isnan(xy).any(axis=1)]
        if len(xy) and np.allclose(np.median(xy[:, 0]), x) and np.ptp(xy[:, 1]) > 0:
            return float(xy[:, 1].min()), float(xy[:, 1].max())
    raise AssertionError(f"no error bar at x={x}")


# ------------------------------------------------------------------------------------------ hand-made tables

def head_matrices(size: int = 4, heads: int = 2) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(1)
    mats, rows = {}, []
    for matrix in ("QK", "OV"):
        for h in range(heads):
            trained = rng.normal(0, 3.0, (size, size))
            untrained = rng.normal(0, 0.1, (size, size))
            if h == 1:
                untrained[0, 0] = -9.0          # the untrained extreme sets the shared limit
            for model, m in (("trained", trained), ("untrained", untrained), ("difference", trained - untrained)):
                mats[matrix, model, h] = m
                rows += [{"row": i, "col": j, "value": m[i, j], "model": model, "matrix": matrix, "head": h}
                         for i in range(size) for j in range(size)]
    return pd.DataFrame(rows), mats


FEATURE_NAMES = ["presence", "x", "y", "vx", "vy", "cos_h", "sin_h"]


def feature_circuits() -> tuple[pd.DataFrame, dict]:
    """circuits/feature_circuits.csv of every seed: QK_features [8, 8] and OV_actions [3, 8] per head and model."""
    rng = np.random.default_rng(3)
    columns = [*FEATURE_NAMES, "bias"]
    mats, rows = {}, []
    for seed in SEEDS:
        for name, row_names in (("QK_features", columns), ("OV_actions", ["SLOWER", "IDLE", "FASTER"])):
            for head in (0, 1):
                for model in names.MODELS:
                    m = rng.normal(0, 1.0 if model == "trained" else 0.2, (len(row_names), len(columns)))
                    mats[name, seed, head, model] = m
                    rows += [{"row": r, "col": c, "value": m[i, j], "matrix": name, "head": head, "model": model,
                              "seed": seed} for i, r in enumerate(row_names) for j, c in enumerate(columns)]
    return pd.DataFrame(rows), mats


def composites() -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(2)
    mats, rows = {}, []
    for matrix in ("embedding_ego", "embedding_others", "output_composite"):
        trained, untrained = rng.normal(0, 2, (5, 3)), rng.normal(0, 0.2, (5, 3))
        for model, m in (("trained", trained), ("untrained", untrained), ("difference", trained - untrained)):
            mats[matrix, model] = m
            rows += [{"row": str(i), "col": f, "value": m[i, j], "model": model, "matrix": matrix}
                     for i in range(5) for j, f in enumerate(FEATURES)]
    return pd.DataFrame(rows), mats


def ig_table() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame([{"seed": s, "model": m, "baseline": b, "quantity": "q", "action": a, "entity": e, "feature": f,
                          "n_steps": 10, "mean_attribution": 0.0, "mean_abs_attribution": rng.random()}
                         for s in SEEDS for m in names.MODELS for b in ("others_zeroed", "typical_scene")
                         for a in ("SLOWER", "IDLE", "FASTER") for e in ("ego", "others") for f in FEATURES])


def layer_table() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    rows = []
    for s in SEEDS:
        for m in names.MODELS:
            for layer in ("ego_embedding.hook_post.1", "output_layer.hook_post.0"):
                for a in ("chosen", "SLOWER"):
                    values = rng.random(8)
                    values[0] = 0.0                     # a dead neuron
                    rows += [{"seed": s, "model": m, "layer": layer, "baseline": "typical_scene_ego", "quantity": "q",
                              "action": a, "neuron": n, "n_steps": 10, "mean_conductance": v,
                              "mean_abs_conductance": v} for n, v in enumerate(values)]
    return pd.DataFrame(rows)


def neuron_table() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rows = []
    for m in names.MODELS:
        for layer, neurons in (("ego_embedding.hook_post.1", (7, 3)), ("output_layer.hook_post.0", (5, 1))):
            for rank, neuron in enumerate(neurons):
                rows += [{"model": m, "layer": layer, "neuron": neuron, "rank": rank, "baseline": "b", "quantity": "q",
                          "action": "chosen", "entity": e, "feature": f, "n_steps": 10,
                          "mean_conductance": rng.normal(), "mean_abs_conductance": 1.0}
                         for e in ("ego", "others") for f in FEATURES]
    return pd.DataFrame(rows)


def over_time_table() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(6)
    rows = [{"model": m, "layer": layer, "episode": 0, "step": t, "neuron": n, "activation": rng.random() * scale}
            for m, scale in (("trained", 1.0), ("untrained", 3.0)) for layer in ("ego_embedding.hook_post.0",
                                                                                 "output_layer.hook_post.1")
            for n in (4, 2, 9) for t in range(5)]
    steps = pd.DataFrame([{"model": m, "episode": 0, "step": t, "action": ("SLOWER", "IDLE", "FASTER")[t % 3]}
                          for m in names.MODELS for t in range(5)])
    return pd.DataFrame(rows), steps


def lens_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(7)
    summary, tuned = [], []
    for s in SEEDS:
        for m in names.MODELS:
            sites = [("ego", np.nan), ("head0", np.nan), ("head1", np.nan), ("full", np.nan)]
            sites += [("added", float(k)) for k in range(4)] + [("head0_added", float(k)) for k in range(4)]
            for site, k in sites:
                n = 5 if (site, k) == ("added", 3.0) else 100       # k = 3 has too few steps: dropped
                summary.append({"seed": s, "model": m, "site": site, "k": k, "agreement": rng.random(), "n": n})
            for site, k in [("ego", np.nan), ("head0", np.nan), ("full", np.nan), *[("added", float(k))
                                                                                    for k in range(4)]]:
                for split in ("train", "held_out"):
                    tuned.append({"seed": s, "model": m, "site": site, "k": k, "split": split, "n": 50,
                                  "agreement": rng.random(), "r2": 0.5})
    return pd.DataFrame(summary), pd.DataFrame(tuned)


def closed_loop_table() -> pd.DataFrame:
    rng = np.random.default_rng(8)
    rows = []
    for s in SEEDS:
        for condition, kind, target, mode, units in (
                ("none", "none", None, None, None), ("head0_zero", "head", "head0", "zero", None),
                ("head1_zero", "head", "head1", "zero", None),
                ("neurons_x_top", "neurons", "others_embedding.hook_post.0", "top", "3 9")):
            for half, metric in itertools.product(("all", "rank", "measure"), ("success", "collision", "return")):
                diff = 0.0 if kind == "none" else rng.normal(0, 0.2)
                rows.append({"seed": s, "condition": condition, "kind": kind, "target": target, "mode": mode,
                             "units": units, "half": half, "metric": metric, "value": 0.5 + diff,
                             "control": 0.5, "diff": diff, "diff_ci_low": diff - rng.random() * 0.1,
                             "diff_ci_high": diff + rng.random() * 0.1, "episodes": 50})
    return pd.DataFrame(rows)


def reported(table: pd.DataFrame) -> pd.DataFrame:
    """The rows the ablations figure draws: heads on the held-out half, the rest on all episodes."""
    return table[table["half"] == table["target"].map(lambda t: "measure" if str(t).startswith("head") else "all")]


def patching_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(9)
    sites = [("ego_embedding.hook_post.0", "embedding", -1, "ego"), ("attention_layer.hook_k", "key", 0, "target"),
             ("attention_layer.hook_k", "key", 0, "other"), ("output_layer.hook_post.0", "neuron", -1, "all"),
             ("attention_layer.hook_resid", "resid", -1, "all")]
    rows, paths = [], []
    for s in SEEDS:
        for kind in ("vehicle_removed", "ego_slower"):
            for pair in range(6):
                rows += [{"seed": s, "kind": kind, "pair": pair, "site": site, "site_class": cls, "head": head,
                          "role": role, "entity": 0, "neuron": -1, "restored": rng.normal(0.5, 0.3)}
                         for site, cls, head, role in sites]
                paths += [{"seed": s, "kind": kind, "pair": pair, "head": head, "path": path,
                           "restored": rng.normal(0.5, 0.3)}
                          for head, path in ((0, "key"), (0, "value"), (-1, "sender"))]
    return pd.DataFrame(rows), pd.DataFrame(paths)


def returns_table() -> pd.DataFrame:
    rng = np.random.default_rng(10)
    return pd.DataFrame([{"seed": s, "step": t, "return": rng.normal(t / 100, 1)} for s in SEEDS for t in range(250)])


def evaluation_table() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    rows = []
    for s in SEEDS:
        for m in names.MODELS:
            for metric in ("success_rate", "collision_rate", "timeout_rate", "mean_return", "mean_length"):
                mean = rng.random()
                rows.append({"seed": s, "model": m, "metric": metric, "mean": mean, "ci_low": mean - 0.05,
                             "ci_high": mean + 0.08})
    return pd.DataFrame(rows)


def agreement_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(12)
    agreement = pd.DataFrame([{"seed": s, "model": m, "attribution": a, "baseline": b, "quantity": "q", "step": t,
                               "head": h, "spearman": np.nan if t == 0 else rng.uniform(-1, 1),
                               "top1_match": float(rng.random() < 0.6), "top1_chance": 1 / (2 + t % 3)}
                              for s in SEEDS for m in names.MODELS for a, b in (("ig", "others_zeroed"),
                                                                                ("shapley", "ego_alone"))
                              for h in (0, 1) for t in range(12)])
    facts = pd.DataFrame([{"seed": s, "model": m, "statistic": stat, "head": h, "fact": f, "n": 40,
                           "spearman": rng.uniform(-1, 1)}
                          for s in SEEDS for m in names.MODELS for stat in ("pooled", "step_mean") for h in (0, 1)
                          for f in ("ttc", "distance", "closing_speed")])
    return agreement, facts


def ranking_table(agreement: pd.DataFrame) -> pd.DataFrame:
    """ranking_baselines.csv of every seed: the naive rankings on the steps of `agreement`."""
    rng = np.random.default_rng(13)
    steps = agreement[agreement["head"] == 0].drop(columns="head")
    return pd.concat([steps.assign(ranking=r, spearman=rng.uniform(-1, 1, len(steps)),
                                   top1_match=(rng.random(len(steps)) < 0.3).astype(float))
                      for r in ("nearest", "lowest_ttc")], ignore_index=True)


def scene_inputs() -> dict:
    """Three steps, four rows: the ego, two present vehicles, one empty row."""
    obs = np.zeros((3, 4, 7))
    for t in range(3):
        obs[t, 0] = [1, 0.02, 0.4 - 0.05 * t, 0, -0.4, 0, -1]            # ego driving up the screen
        obs[t, 1] = [1, -0.5 + 0.05 * t, 0.02, 0.3, 0, 1, 0]             # from the left, eastbound
        obs[t, 3] = [1, -0.02, -0.6, 0, 0.3, 0, 1]                       # from the top, southbound
    attention = np.zeros((3, 2, 4))
    attention[:, 0, [0, 1, 3]] = [0.6, 0.3, 0.1]
    attention[:, 1, [0, 1, 3]] = [0.2, 0.1, 0.7]
    return {"obs": obs, "attention": attention, "action": np.array([2, 0, 1]),
            "q": np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0]]),
            "vehicle_id": np.array([[0, 7, -1, 4]] * 3), "steps": [0, 2], "env": EnvConfig(), "title": "a test scene"}


def scene_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two seeds' designed scenes on one route: going now collides at gaps 0 and 0.5, the planner brakes at 0."""
    rng = np.random.default_rng(13)
    gaps = [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
    setting = {"route": "o1-o3", "visible": False, "ego_to_junction": 20.0, "ego_speed": 9.0, "other_speed": 8.0}
    scenes = pd.DataFrame([{"seed": s, **setting, "model": m, "gap": g, "q_slower_minus_faster": rng.normal(),
                            "go_outcome": "collision" if g in (0.0, 0.5) else "arrived",
                            "clairvoyant_action": "SLOWER" if g == 0.0 else "FASTER"}
                           for s in SEEDS[:2] for m in names.MODELS for g in gaps])
    heads = pd.DataFrame([{"seed": s, "route": "o1-o3", "visible": False, "model": m, "gap": g, "head": h,
                           "head_role": f"head_rank{h + 1}", "attention": rng.uniform(), "ablation": a,
                           "effect": rng.normal()}
                          for s in SEEDS[:2] for m in names.MODELS for g in gaps for h in (0, 1)
                          for a in ("mean_over_sweep", "zero")])
    return scenes, heads


FIGURE_INPUTS: dict[str, Callable[[], dict]] = {
    "qk_circuits": lambda: {"feature_circuits": feature_circuits()[0], "head_matrices": head_matrices()[0]},
    "ov_circuits": lambda: {"feature_circuits": feature_circuits()[0], "head_matrices": head_matrices()[0]},
    "embedding_composites": lambda: {"composites": composites()[0]},
    "ig_features": lambda: {"ig": ig_table()},
    "layer_conductance": lambda: {"conductance": layer_table()},
    "neuron_conductance": lambda: {"conductance": neuron_table()},
    "neuron_activations": lambda: dict(zip(("over_time", "steps"), over_time_table())),
    "attention_scene": scene_inputs,
    "logit_lens": lambda: dict(zip(("lens_summary", "tuned_lens"), lens_tables())),
    "ablations": lambda: {"closed_loop": closed_loop_table()},
    "patching": lambda: dict(zip(("patching_table", "path_patching"), patching_tables())),
    "learning_curves": lambda: {"returns": returns_table(), "reference": {"constant_idle": 4.97, "clairvoyant": 8.3}},
    "evaluation": lambda: {"evaluation_table": evaluation_table(), "reference": reference_table()},
    "attention_vs_attribution": lambda: {**dict(zip(("agreement", "attention_facts"), agreement_tables())),
                                         "ranking_baselines": ranking_table(agreement_tables()[0])},
    "designed_scenes": lambda: dict(zip(("scenes", "heads"), scene_tables())),
}
HEATMAPS_ONLY = {"qk_circuits", "ov_circuits", "embedding_composites", "neuron_conductance", "neuron_activations"}


def draw(name: str) -> Figure:
    return getattr(plots, name)(**FIGURE_INPUTS[name]())


# ------------------------------------------------------------------------------------------ every figure

def test_registry_has_a_caption_for_each_figure_function_and_nothing_else():
    figure_functions = {name for name, fn in inspect.getmembers(plots, inspect.isfunction)
                        if fn.__module__.startswith(plots.__name__ + ".") and not name.startswith("_")
                        and inspect.signature(fn).return_annotation in ("Figure", Figure)}
    assert set(names.FIGURES) | set(names.OTHER_FIGURES) == figure_functions
    assert set(names.FIGURES) == set(FIGURE_INPUTS)
    for name, caption in names.FIGURES.items():
        assert caption.endswith(".") and len(caption) > 40, name


@pytest.mark.parametrize("name", sorted(FIGURE_INPUTS))
def test_every_figure_has_a_title_axis_labels_and_a_legend_when_it_has_several_series(name):
    fig = draw(name)
    assert fig._suptitle is not None and fig._suptitle.get_text().strip()
    for ax in data_axes(fig):
        x_labelled = [a for a in ax.get_shared_x_axes().get_siblings(ax) if a.get_xlabel().strip()]
        assert ax.get_xlabel().strip() or x_labelled, f"{name}: an axes without an x label"
        labelled = [a for a in ax.get_shared_y_axes().get_siblings(ax) if a.get_ylabel().strip()]
        assert ax.get_ylabel().strip() or labelled, f"{name}: an axes without a y label"
        assert ax.get_title().strip(), f"{name}: an axes without a title"
    if name not in HEATMAPS_ONLY:
        legends = [*fig.legends, *(legend for sub in fig.subfigs for legend in sub.legends),
                   *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
        assert legends, f"{name}: no legend"


def test_png_bytes_are_identical_when_a_figure_is_rendered_twice():
    for name in ("evaluation", "attention_scene", "qk_circuits", "patching", "ablations", "attention_vs_attribution",
                 "logit_lens"):
        first, second = figure_png(draw(name)), figure_png(draw(name))
        assert first[:8] == b"\x89PNG\r\n\x1a\n"
        assert first == second, name
        assert b"Software" not in first


def test_t_interval_is_the_student_interval_over_seeds_and_a_point_for_one_seed():
    values = np.array([0.2, 0.5, 1.1])
    assert plots.t_interval(values) == pytest.approx(hand_interval(values))
    assert plots.t_interval([0.7]) == (0.7, 0.7)


# ------------------------------------------------------------------------------------------ circuits

@pytest.mark.parametrize("matrix", ["QK", "OV"])
def test_circuit_figures_show_every_seeds_feature_projection_by_head_role_and_the_raw_matrices_second(matrix):
    table, mats = feature_circuits()
    raw, raw_mats = head_matrices()
    ranks = {SEEDS[0]: {0: 1, 1: 2}, **{s: {0: 2, 1: 1} for s in SEEDS[1:]}}
    fig = (plots.qk_circuits if matrix == "QK" else plots.ov_circuits)(table, raw, ranks)
    axes = [ax for ax in data_axes(fig) if ax.images]
    name = "QK_features" if matrix == "QK" else "OV_actions"
    # each network on its own scale: the untrained panels are not blank at the trained network's scale
    limit = {model: max(np.abs(m).max() for (mat, _, _, mod), m in mats.items() if mat == name and mod == model)
             for model in names.MODELS}
    projected = axes[:len(SEEDS) * 4]
    for i, seed in enumerate(SEEDS):
        for j, (rank, model) in enumerate((r, m) for m in names.MODELS for r in (1, 2)):   # trained panels first
            head = next(h for h, r in ranks[seed].items() if r == rank)
            ax = projected[i * 4 + j]
            assert ax.get_title() == f"seed {seed}, head_rank{rank}, {model}"
            np.testing.assert_allclose(ax.images[0].get_array(), mats[name, seed, head, model])
            assert ax.images[0].get_clim() == pytest.approx((-limit[model], limit[model]))
    feature_names = [t.get_text() for t in projected[-1].get_xticklabels()]
    assert feature_names == [*FEATURE_NAMES, "bias"]
    raw_axes = axes[len(SEEDS) * 4:]
    assert [ax.get_title() for ax in raw_axes] == [f"seed {SEEDS[0]}, head_rank1, trained (raw)",
                                                   f"seed {SEEDS[0]}, head_rank2, trained (raw)"]
    np.testing.assert_allclose(raw_axes[0].images[0].get_array(), raw_mats[matrix, "trained", 0])


def test_embedding_composites_show_neuron_by_feature_matrices_with_feature_names():
    table, mats = composites()
    fig = plots.embedding_composites(table)
    axes = data_axes(fig)
    assert len(axes) == 6                                   # the output composite is not drawn
    for i, (matrix, model) in enumerate((m, mo) for m in ("embedding_ego", "embedding_others")
                                        for mo in ("trained", "untrained", "difference")):
        np.testing.assert_allclose(axes[i].images[0].get_array(), mats[matrix, model])
        assert [t.get_text() for t in axes[i].get_xticklabels()] == FEATURES
    limit = max(np.abs(mats["embedding_ego", m]).max() for m in names.MODELS)
    assert axes[0].images[0].get_clim() == axes[1].images[0].get_clim() == pytest.approx((-limit, limit))


# ------------------------------------------------------------------------------------------ attributions

def test_ig_bars_are_means_over_seeds_with_t_intervals_for_the_chosen_baseline():
    table = ig_table()
    fig = plots.ig_features(table)
    axes = data_axes(fig)
    chosen = table[(table["baseline"] == "others_zeroed")]
    for r, model in enumerate(names.MODELS):
        for c, action in enumerate(("SLOWER", "IDLE", "FASTER")):
            ax = axes[r * 3 + c]
            for container, entity in zip(ax.containers, ("ego", "others")):
                for bar, feature in zip(container.patches, FEATURES):
                    values = chosen[(chosen["model"] == model) & (chosen["action"] == action)
                                    & (chosen["entity"] == entity) & (chosen["feature"] == feature)]
                    values = values.sort_values("seed")["mean_abs_attribution"].to_numpy()
                    assert bar.get_height() == pytest.approx(values.mean())
                    centre = bar.get_x() + bar.get_width() / 2
                    assert interval_of(ax, centre) == pytest.approx(hand_interval(values), rel=1e-5, abs=1e-6)


def test_layer_conductance_draws_each_seeds_neurons_sorted_from_the_largest():
    table = layer_table()
    fig = plots.layer_conductance(table)
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == ["ego emb. 1", "output MLP 0"]
    for ax, layer in zip(axes, ("ego_embedding.hook_post.1", "output_layer.hook_post.0")):
        assert ax.get_yscale() == "log"
        for model in names.MODELS:
            for seed in SEEDS:
                expected = table[(table["layer"] == layer) & (table["model"] == model) & (table["seed"] == seed)
                                 & (table["action"] == "chosen")]["mean_abs_conductance"].to_numpy()
                line = next(li for li in ax.lines if li.get_label() == f"{model}, seed {seed}")
                np.testing.assert_allclose(line.get_ydata(), np.sort(expected)[::-1])
                np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 9))


def test_neuron_conductance_heatmap_rows_are_the_top_neurons_and_columns_the_inputs():
    table = neuron_table()
    fig = plots.neuron_conductance(table)
    for ax, model in zip(data_axes(fig), names.MODELS):
        rows = table[table["model"] == model]
        expected = np.array([[rows[(rows["layer"] == layer) & (rows["neuron"] == n) & (rows["entity"] == e)
                                   & (rows["feature"] == f)]["mean_conductance"].item()
                              for e in ("ego", "others") for f in FEATURES]
                             for layer, n in (("ego_embedding.hook_post.1", 7), ("ego_embedding.hook_post.1", 3),
                                              ("output_layer.hook_post.0", 5), ("output_layer.hook_post.0", 1))])
        np.testing.assert_allclose(ax.images[0].get_array(), expected)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["ego emb. 1 #7", "ego emb. 1 #3", "output MLP 0 #5",
                                                                "output MLP 0 #1"]
        limit = np.abs(expected).max()
        assert ax.images[0].get_clim() == pytest.approx((-limit, limit))


# ------------------------------------------------------------------------------------------ neurons, scene

def test_neuron_activations_heatmaps_are_neuron_by_step_with_a_scale_shared_per_layer():
    table, steps = over_time_table()
    fig = plots.neuron_activations(table, steps)
    axes = data_axes(fig)                                          # rows: models, columns: layers
    for r, model in enumerate(names.MODELS):
        for c, layer in enumerate(("ego_embedding.hook_post.0", "output_layer.hook_post.1")):
            rows = table[(table["model"] == model) & (table["layer"] == layer)]
            expected = np.array([[rows[(rows["neuron"] == n) & (rows["step"] == t)]["activation"].item()
                                  for t in range(5)] for n in (4, 2, 9)])
            image = axes[r * 2 + c].images[0]
            np.testing.assert_allclose(image.get_array(), expected)
            top = table[table["layer"] == layer]["activation"].max()
            assert image.get_clim() == pytest.approx((0.0, top))
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["0\nS", "1\nI", "2\nF", "3\nS", "4\nI"]


def test_attention_scene_draws_present_vehicles_where_the_observation_puts_them_beside_each_heads_attention():
    inputs = scene_inputs()
    fig = plots.attention_scene(**inputs)
    axes = data_axes(fig)
    kin = denormalize(inputs["obs"], inputs["env"])
    for r, t in enumerate(inputs["steps"]):
        scene, bars = axes[2 * r], axes[2 * r + 1]
        vehicles = [p for p in scene.patches if isinstance(p, Rectangle) and p.get_label().strip("_")]
        assert [v.get_label() for v in vehicles] == ["ego", "car 7", "car 4"]     # the empty row is not drawn
        np.testing.assert_allclose(vehicles[0].get_center(), [kin.x[t, 0], kin.y[t, 0]], atol=1e-9)
        assert scene.yaxis_inverted()                              # y points down the screen
        action = ("SLOWER", "IDLE", "FASTER")[inputs["action"][t]]
        assert action in scene.get_title() and action in bars.get_title()
        order = [0, 3, 1]                                          # ego first, then by simulator id (4, 7)
        assert [tl.get_text() for tl in bars.get_xticklabels()] == ["ego", "car 4", "car 7"]
        for h, container in enumerate(bars.containers):
            np.testing.assert_allclose([p.get_height() for p in container.patches], inputs["attention"][t, h, order])


def test_vehicle_labels_of_a_crowded_scene_do_not_overlap_each_other_or_a_vehicle():
    inputs = scene_inputs()
    rng = np.random.default_rng(0)
    obs = np.zeros((1, 8, 7))
    obs[0, :, 0] = 1
    obs[0, :, 1:3] = rng.uniform(-0.03, 0.03, (8, 2))               # eight vehicles within ±3 m of each other
    obs[0, :, 5] = 1
    inputs.update(obs=obs, attention=np.full((1, 2, 8), 1 / 8), action=np.array([1]), q=np.zeros((1, 3)),
                  vehicle_id=np.arange(8)[None] * 11, steps=[0])
    fig = plots.attention_scene(**inputs)
    fig.canvas.draw()
    scene = data_axes(fig)[0]
    labels = [text for text in scene.texts if text.get_text()]
    renderer = fig._get_renderer()
    for label in labels:
        label.update_positions(renderer)
    boxes = [Text.get_window_extent(label, renderer) for label in labels]   # the text alone, not its leader line
    assert len(boxes) == 8
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())
    cars = [patch.get_window_extent() for patch in scene.patches
            if isinstance(patch, Rectangle) and patch.get_label().strip("_")]               # vehicles, not roads
    assert len(cars) == 8
    assert not any(box.overlaps(car) for box in boxes for car in cars)


# ------------------------------------------------------------------------------------------ lens, interventions

def test_logit_lens_bars_and_curves_are_means_over_seeds_without_rows_of_too_few_steps():
    summary, tuned = lens_tables()
    fig = plots.logit_lens(summary, tuned, min_steps=20)
    axes = data_axes(fig)
    held_out = tuned[tuned["split"] == "held_out"]
    sites = ["ego", "head0", "head1", "full"]
    for ax, model in zip(axes[:2], names.MODELS):
        logit, tuned_bars = ax.containers
        for bar, site in zip(logit.patches, sites):
            values = summary[(summary["model"] == model) & (summary["site"] == site)]["agreement"]
            assert bar.get_height() == pytest.approx(values.mean())
        tuned_heights = [p.get_height() for p in tuned_bars.patches]
        expected = [held_out[(held_out["model"] == model) & (held_out["site"] == s)]["agreement"].mean()
                    for s in ("ego", "head0", "full")]
        np.testing.assert_allclose([h for h in tuned_heights if not np.isnan(h)], expected)
    added = summary[(summary["site"] == "added") & (summary["model"] == "trained") & (summary["n"] >= 20)]
    curve = added.groupby("k")["agreement"].mean()
    assert list(curve.index) == [0.0, 1.0, 2.0]                     # k = 3 had n = 5 < 20
    drawn = [li.get_ydata() for li in axes[2].lines if len(li.get_ydata()) == 3]
    assert any(np.allclose(y, curve.to_numpy()) for y in drawn)


def test_logit_lens_averages_heads_by_role_and_draws_each_lenses_majority_baseline():
    summary, tuned = lens_tables()
    ranks = {SEEDS[0]: {0: 2, 1: 1}, **{s: {0: 1, 1: 2} for s in SEEDS[1:]}}
    controls = pd.DataFrame([{"seed": s, "model": m, "lens": lens, "quantity": "majority_rate", "value": v}
                             for s in SEEDS for m in names.MODELS
                             for lens, v in (("logit", 0.4 + 0.1 * s), ("tuned", 0.3))])
    fig = plots.logit_lens(summary, tuned, min_steps=20, ranks=ranks, controls=controls)
    trained = data_axes(fig)[0]
    assert [t.get_text() for t in trained.get_xticklabels()] == ["ego", "head_rank1", "head_rank2", "full"]
    # head_rank1 is head 1 in the first seed and head 0 in the others
    rank1 = summary[(summary["model"] == "trained") & (
        ((summary["seed"] == SEEDS[0]) & (summary["site"] == "head1"))
        | ((summary["seed"] != SEEDS[0]) & (summary["site"] == "head0")))]["agreement"]
    assert trained.containers[0].patches[1].get_height() == pytest.approx(rank1.mean())
    dashed = sorted(round(float(li.get_ydata()[0]), 9) for li in trained.lines if li.get_linestyle() == "--")
    assert dashed == [0.3, round(np.mean([0.4 + 0.1 * s for s in SEEDS]), 9)]


def test_ablations_show_each_seeds_own_difference_and_ci_never_an_average_over_seeds():
    fig = plots.ablations(closed_loop_table())
    table = reported(closed_loop_table())
    axes = data_axes(fig)
    assert [t.get_text() for t in axes[0].get_yticklabels()] == [
        "head 0 zeroed (held-out half)", "head 1 zeroed (held-out half)",
        "others embedding, layer 1: 2 top-conductance neurons mean-ablated"]
    for ax, metric in zip(axes, ("success", "collision")):
        containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert [c.get_label() for c in containers] == [*(f"seed {s}" for s in SEEDS),
                                                       "pooled: mean over seeds (95% t-interval)"]
        containers, (pooled,) = containers[:-1], containers[-1:]
        for container, seed in zip(containers, SEEDS):
            rows = table[(table["seed"] == seed) & (table["metric"] == metric) & (table["kind"] != "none")]
            data_line, _, (bars,) = container.lines
            np.testing.assert_allclose(data_line.get_xdata(), rows["diff"])
            segments = np.array([seg[:, 0] for seg in bars.get_segments()])
            np.testing.assert_allclose(segments, rows[["diff_ci_low", "diff_ci_high"]].to_numpy())
        head0 = table[(table["condition"] == "head0_zero") & (table["metric"] == metric)]["diff"]
        plotted = np.concatenate([c.lines[0].get_xdata() for c in containers])
        assert not np.isclose(plotted, head0.mean()).any()
        # the pooled diamond is the mean over seeds, on each condition's row, with its t-interval over seeds
        np.testing.assert_allclose(pooled.lines[0].get_xdata()[0], head0.mean())
        (bars,) = pooled.lines[2]
        np.testing.assert_allclose(bars.get_segments()[0][:, 0], hand_interval(head0.to_numpy()), rtol=1e-5)
        # the unablated agent's rate (the control row, all episodes) is named in the title
        control = closed_loop_table()
        rate = control[(control["kind"] == "none") & (control["half"] == "all") & (control["metric"] == metric)]
        assert f"unablated agent {rate['value'].mean():.2f}" in ax.get_title()


def test_ablation_rows_name_heads_by_their_role_in_each_seed():
    table = reported(closed_loop_table())
    ranks = {SEEDS[0]: {0: 1, 1: 2}, **{s: {0: 2, 1: 1} for s in SEEDS[1:]}}
    fig = plots.ablations(closed_loop_table(), ranks=ranks)
    ax = data_axes(fig)[0]
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["head_rank1 zeroed (held-out half)",
                                                                "head_rank2 zeroed (held-out half)"]
    # seed 0's head 0 and the other seeds' head 1 share the head_rank1 row
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer) and c.get_label().startswith("seed")]
    for container, seed in zip(containers, SEEDS):
        head = 0 if seed == SEEDS[0] else 1
        rows = table[(table["seed"] == seed) & (table["metric"] == "success")]
        diff = rows[rows["condition"] == f"head{head}_zero"]
        y = container.lines[0].get_ydata()
        x = container.lines[0].get_xdata()
        assert x[np.argmin(y)] == pytest.approx(float(diff["diff"].iloc[0]))
    assert [plots.ablation_label({"kind": "vehicle", "target": t, "mode": "remove"})
            for t in ("most_attended", "random", "nearest", "lowest_ttc")] == [
        "most-attended vehicle removed", "random vehicle removed", "nearest vehicle removed",
        "lowest time-to-collision vehicle removed"]
    edit = {"kind": "edit", "target": "head0", "mode": "x2"}
    assert plots.ablation_label(edit, {0: 2}) == "head_rank2 output scaled x2"


def test_patching_points_are_each_seeds_mean_restored_fraction_per_site_and_path():
    table, paths = patching_tables()
    ranks = {SEEDS[0]: {0: 2}, **{s: {0: 1} for s in SEEDS[1:]}}
    fig = plots.patching(table, paths, ranks=ranks)
    axes = data_axes(fig)                                           # rows: sites, paths; columns: kinds
    site_ax = axes[0]
    labels = [t.get_text() for t in site_ax.get_yticklabels()]
    # heads by role in each seed (seed 0's head 0 is head_rank2, the others' head_rank1); no 'other', 'neuron'
    assert labels == ["ego emb. 0 [ego]", "attention k head_rank1 [target]", "attention k head_rank2 [target]",
                      "attention resid [all]"]
    path_labels = [t.get_text() for t in axes[2].get_yticklabels()]
    assert path_labels == ["head_rank1: key", "head_rank1: value", "head_rank2: key", "head_rank2: value",
                           "sender (all heads)"]
    assert "0 = corrupted run, 1 = clean run" in site_ax.get_xlabel()
    assert "0 = corrupted, 1 = fully restored" in fig._suptitle.get_text()
    containers = [c for c in site_ax.containers if isinstance(c, ErrorbarContainer)]
    for container, seed in zip(containers, SEEDS):
        rows = table[(table["seed"] == seed) & (table["kind"] == "vehicle_removed")]
        means = [rows[(rows["site"] == site) & (rows["role"] == role)]["restored"].mean()
                 for site, role in (("ego_embedding.hook_post.0", "ego"), ("attention_layer.hook_k", "target"),
                                    ("attention_layer.hook_resid", "all"))]
        np.testing.assert_allclose(container.lines[0].get_xdata(), means)
    # the pooled diamond of the head_rank1 key row: the mean over the seeds whose head_rank1 is head 0
    pooled = containers[-1]
    assert pooled.get_label().startswith("pooled")
    rank1 = table[(table["kind"] == "vehicle_removed") & (table["site"] == "attention_layer.hook_k")
                  & (table["role"] == "target") & (table["seed"] != SEEDS[0])]
    y = pooled.lines[0].get_ydata()
    x = pooled.lines[0].get_xdata()
    assert x[list(np.round(y)).index(1.0)] == pytest.approx(rank1.groupby("seed")["restored"].mean().mean())


def test_patching_marks_a_mean_beyond_the_axis_at_its_edge_instead_of_stretching_it():
    table, paths = patching_tables()
    table.loc[(table["seed"] == SEEDS[1]) & (table["site"] == "attention_layer.hook_resid"), "restored"] = -3.0
    fig = plots.patching(table, paths)
    ax = data_axes(fig)[0]
    assert ax.get_xlim() == pytest.approx((-0.55, 1.55))
    edges = [c for c in ax.collections if c.get_label().startswith("mean beyond the axis")]
    assert len(edges) == 1 and edges[0].get_offsets()[0][0] == pytest.approx(-0.5)


def test_patching_of_a_one_seed_study_draws_that_seeds_points():
    table, paths = patching_tables()
    one = SEEDS[0]
    fig = plots.patching(table[table["seed"] == one], paths[paths["seed"] == one])
    containers = [c for c in data_axes(fig)[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(containers[0].lines[0].get_xdata()) == 3


# ------------------------------------------------------------------------------------------ training, attention

def test_learning_curves_draw_the_reference_returns_in_every_panel():
    fig = plots.learning_curves(returns_table(), window=50, reference={"constant_idle": 4.97, "clairvoyant": 8.3})
    for ax in data_axes(fig):
        levels = {li.get_label(): li.get_ydata()[0] for li in ax.lines if li.get_label().endswith("(held-out)")}
        assert levels == {"constant IDLE (held-out)": 4.97, "clairvoyant planner (ceiling) (held-out)": 8.3}


def test_learning_curves_smooth_each_seed_with_a_trailing_mean_of_the_window():
    table = returns_table()
    fig = plots.learning_curves(table, window=50)
    top = data_axes(fig)[0]
    for line, seed in zip(top.lines, SEEDS):
        expected = table[table["seed"] == seed]["return"].rolling(50).mean().to_numpy()
        np.testing.assert_allclose(line.get_ydata(), expected, equal_nan=True)
        assert np.isnan(line.get_ydata()[:49]).all()


def test_evaluation_bars_are_the_stored_means_with_the_stored_intervals():
    table = evaluation_table()
    fig = plots.evaluation(table)
    axes = data_axes(fig)
    assert len(axes) == 4                                           # mean_length is not drawn
    for ax, metric in zip(axes, ("success_rate", "collision_rate", "timeout_rate", "mean_return")):
        for bars, errors, model in zip(ax.containers[0::2], ax.containers[1::2], names.MODELS):
            rows = table[(table["metric"] == metric) & (table["model"] == model)].sort_values("seed")
            np.testing.assert_allclose([p.get_height() for p in bars.patches], rows["mean"])
            segments = np.array([seg[:, 1] for seg in errors.lines[2][0].get_segments()])
            np.testing.assert_allclose(segments, rows[["ci_low", "ci_high"]].to_numpy())


def reference_table() -> pd.DataFrame:
    rng = np.random.default_rng(12)
    return pd.DataFrame([{"policy": p, "metric": m, "mean": rng.random()} for p in plots.REFERENCE_STYLES
                         for m in ("success_rate", "collision_rate", "timeout_rate", "mean_return")])


def test_evaluation_draws_every_reference_policy_at_its_value_in_every_panel():
    reference = reference_table()
    fig = plots.evaluation(evaluation_table(), reference)
    for ax, metric in zip(data_axes(fig), ("success_rate", "collision_rate", "timeout_rate", "mean_return")):
        lines = {li.get_label(): li.get_ydata()[0] for li in ax.lines}
        for policy, (label, _, _) in plots.REFERENCE_STYLES.items():
            expected = reference[(reference["policy"] == policy) & (reference["metric"] == metric)]["mean"]
            assert lines[label] == pytest.approx(float(expected.iloc[0]))


def test_attention_vs_attribution_shows_per_seed_head_medians_and_pooled_fact_correlations():
    agreement, facts = agreement_tables()
    fig = plots.attention_vs_attribution(agreement, facts)
    axes = data_axes(fig)
    ig_ax = axes[0]
    assert [t.get_text() for t in ig_ax.get_xticklabels()] == [f"s{s} h{h}" for s in SEEDS for h in (0, 1)]
    horizontal = {round(float(li.get_ydata()[0]), 9) for li in ig_ax.lines
                  if len(li.get_ydata()) == 2 and li.get_ydata()[0] == li.get_ydata()[1]}
    ig = agreement[agreement["attribution"] == "ig"].dropna()
    for (_, _, _), group in ig.groupby(["seed", "head", "model"]):
        assert round(float(group["spearman"].median()), 9) in horizontal
    for ax, model in zip(axes[3:5], names.MODELS):
        pooled = facts[(facts["statistic"] == "pooled") & (facts["model"] == model)]
        expected = np.array([[pooled[(pooled["seed"] == s) & (pooled["head"] == h) & (pooled["fact"] == f)]
                              ["spearman"].item() for f in ("ttc", "distance", "closing_speed")]
                             for s in SEEDS for h in (0, 1)])
        np.testing.assert_allclose(np.asarray(ax.collections[0].get_array()).reshape(expected.shape), expected)


def test_attention_is_drawn_beside_the_naive_rankings_and_its_top1_beside_the_chance_level():
    agreement, facts = agreement_tables()
    rankings = ranking_table(agreement)
    ranks = {s: {0: 2, 1: 1} for s in SEEDS}
    fig = plots.attention_vs_attribution(agreement, facts, rankings, ranks)
    shapley_ax, top1_ax = data_axes(fig)[1:3]
    order = [f"s{s} {u}" for s in SEEDS for u in ("head_rank1", "head_rank2", "nearest first", "lowest TTC first")]
    assert [t.get_text() for t in shapley_ax.get_xticklabels()] == order
    # the nearest-first ranking's box of the trained network of seed 1 has the median of its own rows
    horizontal = {round(float(li.get_ydata()[0]), 9) for li in shapley_ax.lines
                  if len(li.get_ydata()) == 2 and li.get_ydata()[0] == li.get_ydata()[1]}
    nearest = rankings[(rankings["seed"] == SEEDS[1]) & (rankings["ranking"] == "nearest")
                       & (rankings["attribution"] == "shapley") & (rankings["model"] == "trained")].dropna()
    assert round(float(nearest["spearman"].median()), 9) in horizontal
    # top-1 bars: head_rank1 (head 1) of the first seed, trained network; and each seed's chance level
    first = agreement[(agreement["seed"] == SEEDS[0]) & (agreement["head"] == 1) & (agreement["model"] == "trained")
                      & (agreement["attribution"] == "shapley")]
    trained_bars = top1_ax.containers[0].patches
    assert trained_bars[0].get_height() == pytest.approx(first["top1_match"].mean())
    chance = [c for c in top1_ax.collections if c.get_label().startswith("chance level")]
    levels = sorted(float(seg[0][1]) for c in chance for seg in c.get_segments())
    assert levels == pytest.approx(sorted(first["top1_chance"].mean() for _ in SEEDS))


def test_patching_without_pairs_draws_a_labelled_figure_that_says_why():
    empty = pd.DataFrame(columns=["kind", "pair", "step", "target", "restored", "seed"])
    fig = plots.patching(empty, empty)
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert any("no clean/corrupted pairs" in text.get_text() for text in ax.texts)


def test_tables_for_the_evaluation_figure_and_the_first_episodes_scene():
    rows = plots.evaluation_rows({3: {"trained": {"success_rate": {"mean": 0.6, "ci_low": 0.5, "ci_high": 0.7}}}})
    assert rows.to_dict("records") == [{"seed": 3, "model": "trained", "metric": "success_rate", "mean": 0.6,
                                        "ci_low": 0.5, "ci_high": 0.7}]
    reference = plots.reference_rows({"constant_idle": {"mean_return": {"mean": 4.9}, "note": "x"},
                                      "clairvoyant": {"mean_return": {"mean": 8.1}}})
    assert plots.reference_returns(reference) == {"constant_idle": 4.9, "clairvoyant": 8.1}
    episode = np.array([2, 2, 2, 2, 2, 2, 3, 3])
    arrays = {"episode": episode, **{key: np.arange(8) for key in ("obs", "attention", "action", "q", "vehicle_id")}}
    inputs = plots.first_episode_scene(arrays, EnvConfig(), seed=7)
    assert list(inputs["obs"]) == [0, 1, 2, 3, 4, 5] and inputs["steps"] == [0, 2, 3, 5]
    assert "seed 7, recorded episode 2" in inputs["title"]


def test_a_run_shorter_than_the_window_is_smoothed_over_all_its_episodes():
    short = pd.DataFrame({"seed": 0, "step": range(8), "return": np.arange(8.0)})
    fig = plots.learning_curves(short, window=100)
    line = data_axes(fig)[0].lines[0]
    np.testing.assert_allclose(line.get_ydata()[-1], np.arange(8.0).mean())
    assert "over 8 episodes" in fig._suptitle.get_text()


def test_designed_scenes_shade_where_going_now_collides_and_name_heads_by_role():
    fig = draw("designed_scenes")
    q_ax, att_ax, _ = data_axes(fig)[:3]
    spans = sorted((round(p.get_x(), 6), round(p.get_x() + p.get_width(), 6)) for p in q_ax.patches)
    assert spans == [(-0.25, 0.25), (0.25, 0.75)]
    labels = {text.get_text() for legend in fig.legends for text in legend.get_texts()}
    assert {"head_rank1", "head_rank2", "going now collides", "clairvoyant planner brakes"} <= labels
    assert len(att_ax.lines) == 2 * 2          # two heads × two seeds, trained only


def test_attention_scene_names_and_orders_heads_by_their_role():
    inputs = scene_inputs()
    fig = plots.attention_scene(**inputs, ranks={0: 2, 1: 1})
    bars = data_axes(fig)[1]
    # head 1 is head_rank1: its bars come first and carry its name; the figure legend names roles too
    assert [c.get_label() for c in bars.containers] == ["head_rank1", "head_rank2"]
    np.testing.assert_allclose([p.get_height() for p in bars.containers[0].patches],
                               inputs["attention"][0, 1, [0, 3, 1]])
    labels = {text.get_text() for legend in fig.legends for text in legend.get_texts()}
    assert {"head_rank1 attention", "head_rank2 attention"} <= labels
    assert not any(label.startswith("head 0") for label in labels)
