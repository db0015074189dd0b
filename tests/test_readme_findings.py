"""The README's Findings section is the report's, rewritten for the repository root, plus per-seed tables."""

from __future__ import annotations

from egolens.findings import FINDINGS, Finding
from egolens.names import SANITY
from tools.readme_findings import (
    completeness_table,
    driving_table,
    findings_tested,
    replace_section,
    report_findings,
)

REPORT = """# title

## Setup

- `seeds`: [0]

## Findings

### Performance

- It drives ([figure `evaluation`](figures/evaluation.png)).

## Beside the kept studies

| a | b |

## Figures

- [`evaluation`](figures/evaluation.png): caption.
"""


def stats(mean: float) -> dict:
    return {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1}


def test_the_report_findings_move_one_heading_level_down_with_links_from_the_root():
    body = report_findings(REPORT)
    assert body.startswith("### Performance")
    assert "(results/figures/evaluation.png)" in body and "](figures/" not in body
    assert "### Beside the kept studies" in body and "## Figures" not in body and "Setup" not in body


def test_only_the_findings_section_is_replaced():
    readme = "# egolens\n\nintro\n\n## Findings\nold\n\n### Old sub\nold\n\n## The pipeline\nkept\n"
    expected = "# egolens\n\nintro\n\n## Findings\nnew\n\n## The pipeline\nkept\n"
    assert replace_section(readme, "## Findings\nnew\n\n") == expected


def test_per_seed_tables_have_a_row_per_seed_network_and_policy():
    rates = {r: stats(0.5) for r in ("success_rate", "collision_rate", "timeout_rate", "mean_return", "mean_length")}
    rows = driving_table({1: {"trained": rates, "untrained": rates}, 0: {"trained": rates, "untrained": rates}},
                         {"clairvoyant": rates})
    assert [r.split(" | ")[:2] for r in rows[2:]] == [["| 0", "trained"], ["| 0", "untrained"], ["| 1", "trained"],
                                                     ["| 1", "untrained"], ["| all", "clairvoyant"]]
    assert "0.50 [0.40, 0.60]" in rows[2] and "0.5 [0.4, 0.6] |" in rows[2]
    one = {"fraction_within": 1.0, "max_rel_error": 0.004, "mean_points": 500.4, "max_points": 900}
    summary = {"trained": {"ig_completeness": {b: {"q": one, "advantage": one} for b in
                                               ("others_zeroed", "typical_scene", "typical_scene_ego")},
                           "conductance_completeness": {k: one for k in
                                                        ("hook_resid", "output_hook_post_0", "output_hook_post_1")}}}
    table = completeness_table({0: summary, 1: summary})
    assert table[0].startswith("| explanation | within 1% (seeds 0 / 1)") and len(table) == 2 + 9
    assert table[2] == "| IG of Q, `others_zeroed` | 1.000 / 1.000 | 0.4% | 500 / 500 / 900 |"


def test_what_each_finding_tests_comes_from_the_code_and_marks_what_the_committed_study_lacks():
    findings = [Finding("new_one", "A beats its control (paired 95% CI above 0).", lambda m: None),
                Finding("old_one", "It adds up.", lambda m: None, SANITY)]
    lines = findings_tested(findings, ["old_one", "attention_tracks_shapley", "gone"])
    assert "| `new_one` (*not run yet*) | finding | A beats its control (paired 95% CI above 0). |" in lines
    assert "| `old_one` | sanity check (holds by construction; not counted) | It adds up. |" in lines
    dropped = lines[-2]
    assert "`attention_tracks_shapley` (replaced by `attention_beats_naive_rankings` and " in dropped
    assert dropped.endswith("`gone`.")
    # the study's own findings: every one listed, none marked when the committed study has them all
    rows = [line for line in findings_tested(FINDINGS, [f.name for f in FINDINGS]) if line.startswith("| `")]
    assert len(rows) == len(FINDINGS) and not any("not run yet" in row for row in rows)
    # a statement's |x| is escaped so the table keeps three columns
    piped = findings_tested([Finding("p", "ranks like |Shapley|.", lambda m: None)], ["p"])
    assert "| `p` | finding | ranks like \\|Shapley\\|. |" in piped
