"""The report is filled from the tables: every number traceable, nothing invented."""

from __future__ import annotations

import math

import pandas as pd

from egolens.report import FINDINGS, PLACEHOLDER, Context, build_report, fill, format_number, setup_lines
from egolens.report.findings import _incomplete


def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    summary = pd.DataFrame([
        {"metric": "a.rate", "n_seeds": 3, "mean": 0.5531, "ci_low": 0.4772, "ci_high": 0.6294},
        {"metric": "a.single", "n_seeds": 1, "mean": 12.345, "ci_low": math.nan, "ci_high": math.nan},
        {"metric": "a.tiny", "n_seeds": 3, "mean": 1.55e-6, "ci_low": 1e-7, "ci_high": 3e-6},
    ])
    holds = pd.DataFrame([{"finding": "works", "statement": "It works.", "n_seeds": 3, "n_holds": 2, "holds": "2/3"}])
    return summary, holds


def test_placeholders_render_mean_and_ci_percentages_holds_and_figure_links():
    summary, holds = tables()
    text = fill("{m:a.rate} | {v:a.rate} | {pct:a.rate} | {m:a.single} | {m:a.tiny} | {h:works} | {fig:curves}",
                summary, holds, {"curves": "Learning curves."})
    assert text == ("0.553 [0.477, 0.629] | 0.553 | 55% | 12.3 | 1.55e-06 [1.00e-07, 3.00e-06] | 2/3 seeds | "
                    "[figure `curves`](figures/curves.png)")


def test_unknown_names_render_na_and_are_reported_missing():
    summary, holds = tables()
    missing: list[str] = []
    assert fill("{m:no.such} {h:nope} {fig:gone}", summary, holds, {}, missing) == "n/a n/a n/a"
    assert missing == ["m:no.such", "h:nope", "fig:gone"]


def test_numbers_keep_three_significant_digits():
    assert [format_number(v) for v in (0.0, 0.12345, -0.5, 5.97181, 69.19, 123.4, 2e-4, math.nan)] == \
        ["0", "0.123", "-0.5", "5.97", "69.2", "123", "2.00e-04", "n/a"]


def params(heads: int = 2, seeds=(0, 1, 2), episodes: int = 6000, top_k: int = 5) -> dict:
    return {"seeds": list(seeds), "train": {"episodes": episodes}, "agent": {"heads": heads, "feature_size": 64},
            "evaluate": {"episodes": 100}, "interventions": {"top_k": top_k},
            "attributions": {"max_steps": 300, "segment_points": 2, "shapley_samples": 25}}


def study_tables(heads: int, off_ego: float, seeds: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables with every metric the report reads for `heads` heads; each head's attention share off the ego."""
    rows = []
    for h in range(1, heads + 1):
        rows += [{"metric": f"closed_loop.head_rank{h}.zero.success_diff", "mean": -0.1 * h},
                 {"metric": f"rollout.trained.attention_off_ego.head_rank{h}", "mean": off_ego}]
    rows += [{"metric": "evaluate.trained.success_rate.mean", "mean": 0.6, "ci_low": 0.5, "ci_high": 0.7},
             {"metric": "evaluate.untrained.success_rate.mean", "mean": 0.55, "ci_low": 0.45, "ci_high": 0.65},
             {"metric": "evaluate.trained_vs_untrained.success.diff", "mean": 0.05, "ci_low": 0.01, "ci_high": 0.09},
             {"metric": "attributions.trained.shapley_efficiency.max_rel_error", "mean": 1e-6, "max": 3e-6}]
    summary = pd.DataFrame(rows).assign(n_seeds=seeds)
    for column in ("ci_low", "ci_high", "max"):
        if column not in summary:
            summary[column] = math.nan
    holds = pd.DataFrame([{"finding": "works", "statement": "It works.", "n_seeds": seeds, "n_holds": 2,
                           "holds": f"2/{seeds}"}])
    return summary, holds


def test_report_has_every_part_and_lists_what_it_could_not_fill():
    summary, holds = tables()
    report = build_report(summary, holds, {"curves": "Learning curves."}, params(), {"torch": "2.13.0"})
    for heading in ("## Question", "## Setup", "## Findings", "## Findings per seed", "## Figures", "## Limits"):
        assert heading in report
    assert "- `train.episodes`: 6000" in report and "torch 2.13.0" in report
    assert "| `works` | 2/3 | It works. |" in report
    assert "Student-t interval with 2 degrees of freedom" in report
    # the study's sentences name metrics this toy table lacks: each is listed, none is invented
    context = Context(summary, holds, params())
    needed = {f"{k}:{n}" for s in FINDINGS for sentence in s.sentences if (t := sentence(context))
              for k, n in PLACEHOLDER.findall(t)}
    assert "Not available in this run" in report
    for name in needed - {"m:a.rate"}:
        assert f"`{name}`" in report


def test_settings_and_head_counts_come_from_the_params_and_tables():
    two = build_report(*study_tables(heads=2, off_ego=0.5), {}, params(), {})
    one = build_report(*study_tables(heads=1, off_ego=0.5, seeds=1), {}, params(heads=1, seeds=(0,), episodes=5,
                                                                                  top_k=2), {})
    assert "(2 heads, 64-wide" in two and "(1 head, 64-wide" in one
    assert "head_rank2" in two and "head_rank2" not in one.split("## Findings per seed")[0]
    assert "the network's single head" in one
    assert "the 5 top-conductance neurons" in two and "random 5-neuron sets" in two
    assert "the 2 top-conductance neurons" in one and "random 2-neuron sets" in one and "five" not in one
    assert "last 100 of 6000 training episodes" in two and "last 5 of 5 training episodes" in one
    assert "One seed: no interval over seeds" in one and "0 degrees of freedom" not in one
    # a worst case is the largest value over seeds, not a mean of per-seed maxima
    assert "largest relative error in any seed of 3.00e-06" in two
    # trained and untrained success side by side, judged by the paired difference, not the intervals' overlap
    assert "succeeds in 0.6 [0.5, 0.7]" in two and "untrained network succeeds in 0.55 [0.45, 0.65]" in two
    assert "changes the success rate by 0.05 [0.01, 0.09] against its untrained network: training raised" in two
    assert "overlap" not in two


def test_training_is_judged_by_the_paired_success_difference_whatever_the_intervals_do():
    summary, holds = study_tables(heads=2, off_ego=0.5)
    row = summary["metric"] == "evaluate.trained_vs_untrained.success.diff"
    across = build_report(summary.assign(ci_low=summary["ci_low"].mask(row, -0.02)), holds, {}, params(), {})
    assert "no change in how often the agent arrives is detected (the paired CI includes 0)" in across
    lower = summary.assign(mean=summary["mean"].mask(row, -0.05), ci_low=summary["ci_low"].mask(row, -0.09),
                           ci_high=summary["ci_high"].mask(row, -0.01))
    assert "training lowered how often the agent arrives" in build_report(lower, holds, {}, params(), {})
    missing = build_report(summary[~row], holds, {}, params(), {})
    assert "Episode by episode on the same held-out episodes the trained agent changes the success" not in missing


def test_attention_is_not_called_pointing_when_the_vehicles_get_little_of_it():
    little = build_report(*study_tables(heads=2, off_ego=0.05), {}, params(), {})
    ample = build_report(*study_tables(heads=2, off_ego=0.5), {}, params(), {})
    assert "head_rank1 0.05" in little and "not where the heads look" in little
    assert "not where the heads look" not in ample
    assert "points at" not in little and "points at" not in ample


def test_the_study_sentences_only_use_known_placeholder_kinds():
    context = Context(*study_tables(heads=2, off_ego=0.5), params())
    for section in FINDINGS:
        for sentence in section.sentences:
            template = sentence(context)
            if template is not None:
                stripped = PLACEHOLDER.sub("", template)
                assert "{" not in stripped and "}" not in stripped, template


def test_the_kept_studies_are_set_beside_this_one_with_a_verdict_per_finding():
    from egolens.report import KeptStudy

    summary, holds = study_tables(heads=2, off_ego=0.5, seeds=5)
    holds = pd.DataFrame([{"finding": "works", "kind": "finding", "statement": "It works.", "n_seeds": 5,
                           "n_holds": 4, "holds": "4/5"},
                          {"finding": "fails", "kind": "finding", "statement": "It fails.", "n_seeds": 5,
                           "n_holds": 1, "holds": "1/5"},
                          {"finding": "always", "kind": "finding", "statement": "It always does.", "n_seeds": 5,
                           "n_holds": 5, "holds": "5/5"},
                          {"finding": "adds_up", "kind": "sanity_check", "statement": "It adds up.", "n_seeds": 5,
                           "n_holds": 5, "holds": "5/5"}])
    paper = KeptStudy(recipe={"name": "reference recipe", "preset": "paper", "code": "abc1234", "seeds": [0, 1, 2],
                              "train.episodes": 6000, "agent.gamma": 0.95},
                      headline={"seeds": 3, "trained": {"success_rate": 0.553}},
                      holds=pd.DataFrame([{"finding": "works", "n_seeds": 3, "n_holds": 1, "holds": "1/3"},
                                          {"finding": "fails", "n_seeds": 3, "n_holds": 0, "holds": "0/3"},
                                          {"finding": "always", "n_seeds": 3, "n_holds": 3, "holds": "3/3"}]),
                      folder="results/paper")
    faithful = KeptStudy(recipe={"name": "faithful", "preset": "faithful", "code": "def5678", "seeds": [0, 1, 2, 3, 4],
                                 "train.episodes": 2000, "env.id": "intersection-v0", "env.policy_frequency": 1},
                         headline={"seeds": 5, "trained": {"success_rate": 0.58, "collision_rate": 0.166}},
                         holds=pd.DataFrame([{"finding": "works", "kind": "finding", "n_seeds": 5, "n_holds": 3,
                                              "holds": "3/5"},
                                             {"finding": "always", "kind": "finding", "n_seeds": 5, "n_holds": 5,
                                              "holds": "5/5"}]),
                         folder="results/faithful")
    this_headline = {"seeds": 5, "trained": {"success_rate": 0.61}}
    report = build_report(summary, holds, {}, {**params(seeds=range(5), episodes=2000),
                                               "agent": {"heads": 2, "feature_size": 64, "gamma": 0.9}},
                          {}, headline=this_headline, kept=[paper, faithful])
    section = report.split("## Beside the kept studies")[1].split("## Figures")[0]
    assert "This study: 5 seeds × 2000 episodes, gamma 0.9." in section
    assert ("- reference recipe (`python -m presets paper`, kept in `results/paper/`): 3 seeds × 6000 episodes, "
            "gamma 0.95; made by earlier code (commit abc1234): comparable in kind, not to the last digit.") in section
    assert ("- faithful (`python -m presets faithful`, kept in `results/faithful/`): 5 seeds × 2000 episodes, "
            "intersection-v0 at 1 Hz; made by earlier code (commit def5678)") in section
    assert "| held-out episodes (mean over seeds) | this study | reference recipe | faithful |" in section
    assert "| success rate | 0.61 | 0.553 | 0.58 |" in section and "| collision rate | n/a | n/a | 0.166 |" in section
    assert "| finding | this study | reference recipe | faithful | verdict |" in section
    # by hand: works 4/5 yes, 1/3 no, 3/5 yes; fails 1/5 no, 0/3 no, not run; always 5/5, 3/3, 5/5 all yes
    assert "| `works` | 4/5 | 1/3 | 3/5 | holds only in: this study, faithful |" in section
    assert "| `fails` | 1/5 | 0/3 | not run | not comparable |" in section
    assert "| `always` | 5/5 | 3/3 | 5/5 | holds in all |" in section
    assert ("Of 3 findings, 1 hold in all 3 studies, 0 in none, 1 in some only and 1 cannot be compared "
            "(a study did not run or check it).") in section                  # the sanity check not counted
    assert "(this study, reference recipe, faithful): `works` (4/5, 1/3, 3/5)." in section
    assert "adds_up" not in section
    # sanity checks are listed apart from the findings
    per_seed = report.split("## Findings per seed")[1].split("## Sanity checks per seed")
    assert "`works`" in per_seed[0] and "adds_up" not in per_seed[0]
    assert "| `adds_up` | 5/5 | It adds up. |" in per_seed[1].split("## Beside the kept studies")[0]
    # without kept studies the section is left out
    assert "## Beside the kept studies" not in build_report(summary, holds, {}, params(), {})


def test_a_kept_study_made_by_this_studys_code_is_not_called_earlier_code():
    from egolens.report.comparison import KeptStudy, comparison_lines

    kept = KeptStudy({"name": "same", "code": "abc1234", "seeds": [0], "train.episodes": 8}, {},
                     pd.DataFrame(columns=["finding", "n_seeds", "n_holds"]), "results/same")
    empty = pd.DataFrame(columns=["finding", "n_seeds", "n_holds"])
    lines = comparison_lines(params(), {}, empty, [kept], code="abc1234")
    assert "- same (kept in `results/same/`): 1 seeds × 8 episodes." in lines
    assert not any("earlier code" in line for line in lines)
    assert any("earlier code (commit abc1234)" in line for line in comparison_lines(params(), {}, empty, [kept]))
    rerun = KeptStudy({**kept.recipe, "code_files": {"egolens/model.py": "aa", "stages/train.py": "bb"}}, {}, empty,
                      "results/same", same_code=True)
    lines = comparison_lines(params(), {}, empty, [rerun])                # this study's commit unknown
    assert ("- same (kept in `results/same/`): 1 seeds × 8 episodes; made by the same code as this study (commit "
            "abc1234: the 2 code files its stages ran are byte-identical here), so each finding is defined the same "
            "way in both.") in lines
    assert not any("earlier code" in line for line in lines)


def test_the_report_stage_compares_a_kept_studys_code_files_with_this_checkouts(tmp_path, monkeypatch):
    import hashlib
    import json

    from stages.report import kept_study

    monkeypatch.chdir(tmp_path)
    (tmp_path / "egolens").mkdir()
    (tmp_path / "egolens" / "model.py").write_text("weights = 1\n")
    folder = tmp_path / "results" / "faithful"
    folder.mkdir(parents=True)
    (folder / "headline.json").write_text("{}")
    (folder / "holds.csv").write_text("finding,n_seeds,n_holds\n")
    md5 = hashlib.md5(b"weights = 1\n").hexdigest()
    recipe = {"name": "faithful", "code": "abc1234", "code_files": {"egolens/model.py": md5}}
    (folder / "recipe.json").write_text(json.dumps(recipe))
    assert kept_study(folder).same_code
    (tmp_path / "egolens" / "model.py").write_text("weights = 2\n")          # the code moved on
    assert not kept_study(folder).same_code
    (folder / "recipe.json").write_text(json.dumps({"name": "paper", "code": "abc1234"}))
    assert not kept_study(folder).same_code                                  # kept without its code files


def test_designed_scenes_are_worded_per_sweep_from_the_tables_and_the_scenes_params():
    summary, holds = study_tables(heads=2, off_ego=0.5)
    rows = []
    for model, agreement in (("trained", 0.81), ("untrained", 0.4)):
        rows += [{"metric": f"scenes.{model}.o1-o3.planner_agreement", "mean": agreement},
                 {"metric": f"scenes.{model}.o1-o3.go_safety_agreement", "mean": agreement - 0.1}]
    rows += [{"metric": f"scenes.trained.o1-o3.{key}", "mean": value}
             for key, value in (("goes_from_gap", 2.5), ("planner_goes_from_gap", 1.5), ("safe_from_gap", 2.0),
                                ("heads.head_rank1.attention_mean", 0.61),
                                ("heads.head_rank1.mean_over_sweep_effect_mean_abs", 0.25),
                                ("heads.head_rank1.mean_over_sweep_flip_rate", 0.3))]
    summary = pd.concat([summary, pd.DataFrame(rows).assign(n_seeds=3)], ignore_index=True)
    scenes = {"ego_longitudinal": 80.0, "ego_speed": 9.0, "other_speed": 8.0, "gap_start": -4.0, "gap_stop": 6.0,
              "routes": ["o1-o3", "o3-o1"], "visible": [False]}
    report = build_report(summary, holds, {"designed_scenes": "Scenes."}, params() | {"scenes": scenes}, {})
    assert "the ego 20 m before the junction at 9 m/s, one vehicle at 8 m/s" in report
    assert "swept from -4 to 6 s after the ego's" in report
    assert ("on route o1-o3 (its destination hidden) the trained agent brakes exactly when the clairvoyant planner "
            "does in 81% of scenes (untrained 40%) and exactly when going now collides in 71% (untrained 30%); it goes "
            "at every gap from 2.5 s on, the planner from 1.5 s and going now is safe from 2 s") in report
    assert "head_rank1 puts 0.61 of its attention on the vehicle" in report and "flipping 30% of decisions" in report
    assert "route o3-o1" not in report                      # a sweep without numbers is left out, not invented
    assert "In designed scenes" not in build_report(*study_tables(heads=2, off_ego=0.5), {}, params(), {})
    assert "tests no timing" not in report                  # the planner brakes first at small gaps here
    # a planner whose first action is "go" at every gap: agreeing with it is not braking, and is said to be so
    goes = summary.assign(mean=summary["mean"].mask(summary["metric"] == "scenes.trained.o1-o3.planner_goes_from_gap",
                                                    -4.0))
    goes = pd.concat([goes, pd.DataFrame([{"metric": f"scenes.{model}.o1-o3.brake_rate", "mean": rate, "n_seeds": 3}
                                          for model, rate in (("trained", 0.1), ("untrained", 0.0))])])
    caveat = build_report(goes, holds, {"designed_scenes": "Scenes."}, params() | {"scenes": scenes}, {})
    assert ("the planner's first action is to go at every gap (it waits later in the episode, if at all), so agreeing "
            "with its first action only means not braking now and tests no timing; the trained agent brakes in 10% of "
            "the scenes and the untrained network in 0%") in caveat
    never = goes[goes["metric"] != "scenes.trained.o1-o3.planner_goes_from_gap"]       # the planner never goes
    assert "tests no timing" not in build_report(never, holds, {"designed_scenes": "S."}, params() | {"scenes": scenes},
                                                 {})


def test_a_failed_deletion_test_reads_as_failed_and_flagged_explanations_are_not_evidence():
    summary, _ = study_tables(heads=2, off_ego=0.5)
    flags = pd.DataFrame([{"metric": "attributions.sanity.ig_others_zeroed.feature.flagged_abs", "mean": 2 / 3,
                           "n_seeds": 3, "seed0": 1.0, "seed1": 1.0, "seed2": 0.0}])
    summary = pd.concat([summary, flags], ignore_index=True)

    def report(n_holds: int) -> str:
        holds = pd.DataFrame([{"finding": "ig_deletion_beats_random", "statement": "s", "n_seeds": 3,
                               "n_holds": n_holds, "holds": f"{n_holds}/3"}])
        return build_report(summary, holds, {}, {**params(), "attributions": {
            **params()["attributions"], "sanity_threshold": 0.5}}, {})

    failed, passed = report(1), report(3)
    assert "lower area is better" in failed and "IG beats random (paired CI below 0) in 1/3 seeds" in failed
    assert "The test fails" in failed and "The test fails" not in passed and "passes in most seeds" in passed
    assert "flags per-feature |IG| (others-zeroed) in 2/3 seeds" in failed
    assert "does not support a finding" in failed


def test_the_sentences_name_their_controls_and_patching_quotes_key_and_value_paths():
    summary, holds = study_tables(heads=2, off_ego=0.5)
    rows = [{"metric": f"interventions.path_patching_restored.vehicle_closer.head_rank{h}_{path}", "mean": value,
             "n_seeds": 3} for h in (1, 2) for path, value in (("key", 0.2 * h), ("key_value", 0.3 * h))]
    report = build_report(pd.concat([summary, pd.DataFrame(rows)], ignore_index=True), holds, {}, params(), {})
    assert "head_rank1: key only 0.2, key and value 0.3; head_rank2: key only 0.4, key and value 0.6" in report
    for control in ("Control: the majority baseline", "Control: the naive rankings", "Control: the chance level",
                    "Control: random deletion orders", "Control: the corrupted run (0) and the clean run (1)",
                    "Control: the same network at initialisation", "Control: the model-parameter randomisation"):
        assert control in report, control
    assert "not what the circuits compute" in report


def test_a_statement_with_pipes_keeps_the_holds_table_to_three_columns():
    summary, _ = tables()
    holds = pd.DataFrame([{"finding": "ranks", "statement": "Attention ranks like |Shapley|.", "n_seeds": 1,
                           "n_holds": 1, "holds": "1/1"}])
    report = build_report(summary, holds, {}, params(), {})
    assert "| `ranks` | 1/1 | Attention ranks like \\|Shapley\\|. |" in report


def test_the_logit_lens_is_read_as_the_ego_term_not_read_alone_only_when_it_is_below_the_tuned_lens():
    summary, holds = study_tables(heads=2, off_ego=0.5)

    def report(logit: float) -> str:
        rows = pd.DataFrame([{"metric": "neurons.trained.logit_lens_agreement.ego", "mean": logit, "n_seeds": 3},
                             {"metric": "neurons.trained.tuned_lens_held_out_agreement.ego", "mean": 0.67,
                              "n_seeds": 3}])
        return build_report(pd.concat([summary, rows], ignore_index=True), holds, {}, params(), {})

    assert "the ego term is not read alone" in report(0.38)
    assert "the ego term is not read alone" not in report(0.9)


def test_a_failed_completeness_check_names_the_part_the_seed_and_the_error():
    prefix = "attributions.trained.ig_completeness.typical_scene.advantage"
    rows = [{"metric": f"{prefix}.fraction_within", "mean": 0.995, "seed0": 1.0, "seed1": 0.99},
            {"metric": f"{prefix}.max_rel_error", "mean": 0.02, "seed0": 0.001, "seed1": 0.039},
            {"metric": f"{prefix}.max_abs_error", "mean": 1e-3, "seed0": 1e-4, "seed1": 2e-3},
            {"metric": "attributions.trained.conductance_completeness.hook_resid.fraction_within", "mean": 1.0,
             "seed0": 1.0, "seed1": 1.0}]
    context = Context(pd.DataFrame(rows), pd.DataFrame(columns=["finding"]), params())
    assert _incomplete(context) == (" Where it fails: IG of the advantage from the typical-scene baseline in seed 1 "
                                    "(complete on 99.0% of the steps; largest error 3.9% of ΔQ, 0.002 in Q).")
    complete = pd.DataFrame(rows).assign(seed1=lambda t: t["seed1"].where(~t["metric"].str.endswith("within"), 1.0))
    assert _incomplete(Context(complete, pd.DataFrame(columns=["finding"]), params())) == ""


def test_the_setup_names_the_env_and_the_recipe_a_reader_needs_to_compare_studies():
    lines = setup_lines({"seeds": [0], "env": {"id": "intersection-v0", "policy_frequency": 2, "duration": 13},
                         "agent": {"n_steps": 3, "exploration": {"duration": "one"}, "dqfd": {"enabled": False}}},
                        {"torch": "2.13.0"})
    assert lines[:3] == ["- `seeds`: [0]", "- `env.id`: intersection-v0", "- `env.policy_frequency`: 2"]
    assert "- `agent.n_steps`: 3" in lines and "- `agent.exploration.duration`: one" in lines
    assert "- `agent.dqfd.enabled`: False" in lines and "- `env.observe_intentions`: None" not in lines
