"""The report is filled from the tables: every number traceable, nothing invented."""

from __future__ import annotations

import math

import pandas as pd

from egolens.report import FINDINGS, PLACEHOLDER, build_report, fill, format_number


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


def test_report_has_every_part_and_lists_what_it_could_not_fill():
    summary, holds = tables()
    params = {"seeds": [0, 1, 2], "train": {"episodes": 6000}, "agent": {"heads": 2}}
    report = build_report(summary, holds, {"curves": "Learning curves."}, params, {"torch": "2.13.0"})
    for heading in ("## Question", "## Setup", "## Findings", "## Findings per seed", "## Figures", "## Limits"):
        assert heading in report
    assert "- `train.episodes`: 6000" in report and "torch 2.13.0" in report
    assert "| `works` | 2/3 | It works. |" in report
    assert "Student-t interval with 2 degrees of freedom" in report
    # the study's templates name metrics this toy table lacks: each is listed, none is invented
    needed = {f"{k}:{n}" for s in FINDINGS for t in s.sentences for k, n in PLACEHOLDER.findall(t)}
    assert "Not available in this run" in report
    for name in needed - {"m:a.rate"}:
        assert f"`{name}`" in report


def test_the_study_templates_only_use_known_placeholder_kinds():
    for section in FINDINGS:
        for sentence in section.sentences:
            stripped = PLACEHOLDER.sub("", sentence)
            assert "{" not in stripped and "}" not in stripped, sentence
