"""report: results/report.md from the aggregate tables, the figure captions and the params."""

from __future__ import annotations

import platform
from importlib import metadata

import pandas as pd

from egolens import checkpoint
from egolens.plots import FIGURES
from egolens.report import build_report
from stages import RESULTS, study_args

PACKAGES = ("torch", "gymnasium", "highway-env", "captum", "dvc", "dvclive", "pandas", "seaborn", "numpy")


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), **{name: metadata.version(name) for name in PACKAGES}}


def main() -> None:
    params = study_args(__doc__)
    report = build_report(pd.read_csv(RESULTS / "summary.csv"), pd.read_csv(RESULTS / "holds.csv"), FIGURES,
                          params.model_dump(), versions())
    checkpoint.atomic_write_text(RESULTS / "report.md", report)


if __name__ == "__main__":
    main()
