"""report: results/report.md from the aggregate tables, the figure captions and the params, with the
kept studies (results/paper/, results/faithful/) beside this one."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import pandas as pd

from egolens import checkpoint, kept, sharing
from egolens.names import FIGURES
from egolens.report import KeptStudy, build_report
from stages import RESULTS, study_args

KEPT = (RESULTS / "paper", RESULTS / "faithful")
"""The kept studies set beside this one, in column order (each with headline.json, holds.csv, recipe.json):
the reference recipe's 3-seed study and the faithful recipe's 5-seed study."""
PACKAGES = ("torch", "gymnasium", "highway-env", "captum", "dvc", "dvclive", "pandas", "seaborn", "numpy")


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), **{name: metadata.version(name) for name in PACKAGES}}


def file_md5s(paths: list[str]) -> dict[str, str]:
    """{path: md5} of those of `paths` that exist in this checkout (the hash dvc.lock records)."""
    return {path: sharing.file_md5(Path(path)) for path in paths if Path(path).is_file()}


def kept_study(folder: Path) -> KeptStudy:
    """A kept study from its folder; its code files (recipe.json's `code_files`) are compared with this
    checkout's, so that a study re-run by the same code is not called earlier code's."""
    recipe = json.loads((folder / "recipe.json").read_text())
    files = recipe.get("code_files") or {}
    return KeptStudy(recipe, json.loads((folder / "headline.json").read_text()), pd.read_csv(folder / "holds.csv"),
                     folder.as_posix(), same_code=kept.same_code(files, file_md5s(list(files))))


def main() -> None:
    params = study_args(__doc__)
    report = build_report(pd.read_csv(RESULTS / "summary.csv"), pd.read_csv(RESULTS / "holds.csv"), FIGURES,
                          params.model_dump(), versions(), headline=json.loads((RESULTS / "headline.json").read_text()),
                          kept=[kept_study(folder) for folder in KEPT])
    checkpoint.atomic_write_text(RESULTS / "report.md", report)


if __name__ == "__main__":
    main()
