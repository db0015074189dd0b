"""report: results/report.md from the aggregate tables, the figure captions and the params, with the
reference recipe's kept study (results/paper/) beside this one."""

from __future__ import annotations

import json
import platform
from importlib import metadata

import pandas as pd

from egolens import checkpoint
from egolens.names import FIGURES
from egolens.report import OtherStudy, build_report
from stages import RESULTS, study_args

OTHER = RESULTS / "paper"
"""The reference recipe's 3-seed study (headline.json, holds.csv, recipe.json), kept for comparison."""
PACKAGES = ("torch", "gymnasium", "highway-env", "captum", "dvc", "dvclive", "pandas", "seaborn", "numpy")


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), **{name: metadata.version(name) for name in PACKAGES}}


def main() -> None:
    params = study_args(__doc__)
    other = OtherStudy(json.loads((OTHER / "recipe.json").read_text()),
                       json.loads((OTHER / "headline.json").read_text()), pd.read_csv(OTHER / "holds.csv"))
    report = build_report(pd.read_csv(RESULTS / "summary.csv"), pd.read_csv(RESULTS / "holds.csv"), FIGURES,
                          params.model_dump(), versions(), headline=json.loads((RESULTS / "headline.json").read_text()),
                          other=other)
    checkpoint.atomic_write_text(RESULTS / "report.md", report)


if __name__ == "__main__":
    main()
