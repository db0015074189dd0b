"""report: results/report.md from the aggregate tables, the figure captions and the params."""

from __future__ import annotations

import argparse
import platform
from importlib import metadata

import pandas as pd
import yaml

from egolens import checkpoint
from egolens.config import ParamsError, load_params
from egolens.plots import FIGURES
from egolens.report import build_report
from stages import RESULTS

PACKAGES = ("torch", "gymnasium", "highway-env", "captum", "dvc", "dvclive", "pandas", "seaborn", "numpy")


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), **{name: metadata.version(name) for name in PACKAGES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    try:
        load_params(args.params)
    except ParamsError as err:
        parser.exit(2, f"error: {err}\n")
    with open(args.params) as f:
        raw = yaml.safe_load(f)
    report = build_report(pd.read_csv(RESULTS / "summary.csv"), pd.read_csv(RESULTS / "holds.csv"), FIGURES, raw,
                          versions())
    checkpoint.atomic_write_text(RESULTS / "report.md", report)


if __name__ == "__main__":
    main()
