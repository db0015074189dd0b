"""Regenerate the README's Findings section from the committed study: `python -m tools.readme_findings`.

The section is the report's findings (`results/report.md`, from "## Findings" up to its figure list,
the "Beside the kept studies" comparison included) with figure links made relative to the repository
root, then two per-seed tables: held-out driving of every seed's trained and untrained network
beside the reference policies (`results/seeds/seed<N>/evaluate.json`, `results/reference/metrics.json`)
and the attribution completeness of every seed (`results/seeds/seed<N>/attributions/summary.json`).
Everything between the README's "## Findings" heading and the next "## " heading is replaced.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from egolens.findings import FINDINGS, Finding
from egolens.names import FINDING

ROOT = Path(__file__).resolve().parents[1]
RATES = ("success_rate", "collision_rate", "timeout_rate", "mean_return", "mean_length")
POLICIES = ("constant_slower", "constant_idle", "constant_faster", "rule_based", "clairvoyant")
EXPLANATIONS = ([(f"IG of {'Q' if q == 'q' else 'the advantage'}, `{b}`", ("ig_completeness", b, q))
                 for b in ("others_zeroed", "typical_scene", "typical_scene_ego") for q in ("q", "advantage")]
                + [(f"layer conductance at `{layer}`", ("conductance_completeness", layer))
                   for layer in ("hook_resid", "output_hook_post_0", "output_hook_post_1")])


def report_findings(report: str) -> str:
    """The report from "## Findings" up to "## Figures", one heading level down, links from the root."""
    body = report.split("\n## Findings\n", 1)[1].split("\n## Figures\n", 1)[0]
    body = re.sub(r"^## ", "### ", body, flags=re.MULTILINE)
    return body.replace("](figures/", "](results/figures/").strip() + "\n"


def _interval(stats: Mapping[str, float], digits: int = 2) -> str:
    return f"{stats['mean']:.{digits}f} [{stats['ci_low']:.{digits}f}, {stats['ci_high']:.{digits}f}]"


def driving_table(evaluations: Mapping[int, Mapping[str, Mapping]], reference: Mapping[str, Mapping]) -> list[str]:
    """Markdown rows: each seed's trained and untrained network, then each reference policy."""
    lines = ["| seed | driver | success | collision | timeout | mean return | mean length |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    def cells(rates: Mapping[str, Mapping[str, float]]) -> str:
        return " | ".join(_interval(rates[r], 1 if r == "mean_length" else 2) for r in RATES)

    for seed, evaluation in sorted(evaluations.items()):
        for model in ("trained", "untrained"):
            lines.append(f"| {seed} | {model} | {cells(evaluation[model])} |")
    for policy in POLICIES:
        if policy in reference:
            lines.append(f"| all | {policy.replace('_', ' ')} | {cells(reference[policy])} |")
    return lines


def completeness_table(summaries: Mapping[int, Mapping]) -> list[str]:
    """Markdown rows: per explanation, the fraction of steps within tolerance in each seed, the largest
    relative error over seeds and the mean / largest gradient evaluations per step."""
    seeds = sorted(summaries)
    lines = [f"| explanation | within 1% (seeds {' / '.join(map(str, seeds))}) | largest error | "
             "mean gradient evaluations per step (by seed) / largest |", "| --- | --- | --- | --- |"]
    for label, path in EXPLANATIONS:
        rows = []
        for seed in seeds:
            node = summaries[seed]["trained"]
            for key in path:
                node = node[key]
            rows.append(node)
        within = " / ".join(f"{r['fraction_within']:.3f}" for r in rows)
        largest = max(r["max_rel_error"] for r in rows)
        points = " / ".join(f"{r['mean_points']:.0f}" for r in rows) + f" / {max(r['max_points'] for r in rows)}"
        lines.append(f"| {label} | {within} | {100 * largest:.2g}% | {points} |")
    return lines


def cell(text: str) -> str:
    """Text for a Markdown table cell: its pipes (|x|) escaped so they do not split the cell."""
    return text.replace("|", "\\|")


REPLACED = {
    "attention_tracks_shapley": ("attention_beats_naive_rankings", "attention_top1_above_chance"),
    "ego_alone_does_not_decide": ("ego_alone_decodes_above_majority", "attention_adds_to_ego_decoding"),
}
"""Findings the current code no longer checks -> the findings that replaced them (with the control they lacked)."""


def findings_tested(findings: Sequence[Finding], committed: Sequence[str]) -> list[str]:
    """Markdown: what every finding and sanity check of the current code tests (its statement, which names
    its control and rule), marked when the committed study (`committed`: the findings of its holds.csv)
    has not checked it yet, and the committed study's findings the code no longer checks."""
    lines = ["### What each finding tests", "",
             "As the current code states them (`egolens/findings.py`); each statement names its control and the "
             "rule it is checked by. The numbers below are the committed study's (`results/report.md`), made by "
             "older code: where its wording of a finding differs from this table, this table says what the next "
             "study checks, and a row marked *not run yet* has no number until the study is rerun.", "",
             "| finding | kind | what it tests |", "| --- | --- | --- |"]
    for finding in findings:
        mark = "" if finding.name in committed else " (*not run yet*)"
        kind = "finding" if finding.kind == FINDING else "sanity check (holds by construction; not counted)"
        lines.append(f"| `{finding.name}`{mark} | {kind} | {cell(finding.statement)} |")
    dropped = [name for name in committed if name not in {f.name for f in findings}]
    if dropped:
        replaced = [f"`{name}` (replaced by {' and '.join(f'`{n}`' for n in REPLACED[name])})"
                    if name in REPLACED else f"`{name}`" for name in dropped]
        lines += ["", "No longer checked by the current code, though the committed study below reports them: "
                  + ", ".join(replaced) + "."]
    return lines + [""]


def findings_section(report: str, evaluations: Mapping[int, Mapping], reference: Mapping[str, Mapping],
                     attributions: Mapping[int, Mapping], intro: Sequence[str],
                     tested: Sequence[str] = ()) -> str:
    """The README's whole Findings section (heading included); `tested`: `findings_tested` lines."""
    parts = ["## Findings", *intro, "", *tested, report_findings(report),
             "### Per seed: held-out driving (`results/seeds/seed<N>/evaluate.json`; reference policies from "
             "`results/reference/metrics.json`, the same episodes; bootstrap 95% CIs)", "",
             *driving_table(evaluations, reference), "",
             "### Per seed: attribution completeness (`results/seeds/seed<N>/attributions/summary.json`)", "",
             "Every path is cut where a ReLU of the network switches (kinks located by root finding on each "
             "unit), each piece integrated with Gauss-Legendre points, and a step still incomplete is redone "
             "on a finer grid (`egolens/analysis/attribution/paths.py`). The trained network's analysed steps:", "",
             *completeness_table(attributions), ""]
    return "\n".join(parts) + "\n"


def replace_section(readme: str, section: str) -> str:
    """`readme` with its "## Findings" section (up to the next "## " heading) replaced by `section`."""
    start = readme.index("\n## Findings\n") + 1
    end = readme.index("\n## ", start + 1) + 1
    return readme[:start] + section + readme[end:]


def main() -> None:
    results = ROOT / "results"
    seeds = sorted(int(p.name.removeprefix("seed")) for p in (results / "seeds").glob("seed*"))
    evaluations = {s: json.loads((results / f"seeds/seed{s}/evaluate.json").read_text()) for s in seeds}
    attributions = {s: json.loads((results / f"seeds/seed{s}/attributions/summary.json").read_text()) for s in seeds}
    reference = json.loads((results / "reference/metrics.json").read_text())
    intro = ["Copied by `python -m tools.readme_findings` from [`results/report.md`](results/report.md), which the "
             "`report` stage wrote from `results/summary.csv`, `results/holds.csv` and params.yaml, and from the "
             "per-seed summaries named below. Heads are named by role (`head_rank1` = the head whose resample "
             "ablation costs the most closed-loop successes on the first half of the closed-loop episodes in that "
             "seed; its effects are measured on the second half)."]
    readme = ROOT / "README.md"
    committed = list(pd.read_csv(results / "holds.csv")["finding"])
    section = findings_section((results / "report.md").read_text(), evaluations, reference, attributions, intro,
                               findings_tested(FINDINGS, committed))
    readme.write_text(replace_section(readme.read_text(), section))


if __name__ == "__main__":
    main()
