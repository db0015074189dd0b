"""A study kept for comparison: recipe.json and README from a revision's params and commits, and the
`python -m presets keep` command on a throw-away git repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from egolens.kept import code_files, kept_readme, kept_recipe, recipe_json, same_code
from tests.conftest import ROOT

PARAMS = {"seeds": [0, 1, 2], "train": {"episodes": 6000, "num_envs": 2},
          "env": {"id": "intersection-v0", "policy_frequency": 1, "duration": 13, "vehicles_count": 15},
          "agent": {"gamma": 0.95, "n_steps": 1, "lr": 0.0005, "dqfd": {"enabled": False}}}


def test_a_kept_recipe_names_the_study_its_preset_its_code_and_the_settings_its_params_have():
    recipe = kept_recipe("old", PARAMS, "abc1234", None)
    assert recipe == {"name": "old", "preset": None, "code": "abc1234", "seeds": [0, 1, 2], "train.episodes": 6000,
                      "env.id": "intersection-v0", "env.policy_frequency": 1, "env.duration": 13,
                      "agent.gamma": 0.95, "agent.n_steps": 1, "agent.dqfd.enabled": False}
    assert '"agent.dqfd.enabled": false' in recipe_json(recipe)          # a setting stays a boolean
    assert json.loads(recipe_json(recipe)) == recipe


LOCK = {"schema": "2.0", "stages": {
    "train@0": {"cmd": "python -m stages.train --seed 0",
                "deps": [{"path": "egolens/model.py", "hash": "md5", "md5": "aa", "size": 3},
                         {"path": "stages/train.py", "hash": "md5", "md5": "bb", "size": 4},
                         {"path": "results/params_valid.txt", "hash": "md5", "md5": "cc", "size": 5}],
                "params": {"params.yaml": {"seeds": [0]}}},
    "evaluate@0": {"cmd": "python -m stages.evaluate --seed 0",
                   "deps": [{"path": "egolens/model.py", "hash": "md5", "md5": "aa", "size": 3},
                            {"path": "models/seed0/agent.pt", "hash": "md5", "md5": "dd", "size": 6}]}}}


def test_a_studys_code_files_are_its_stages_code_dependencies_with_their_md5s():
    assert code_files(LOCK) == {"egolens/model.py": "aa", "stages/train.py": "bb"}     # data deps left out
    assert code_files({"schema": "2.0"}) == {}
    stale = {"stages": {**LOCK["stages"], "evaluate@0": {"deps": [{"path": "egolens/model.py", "md5": "ee"}]}}}
    with pytest.raises(ValueError, match="egolens/model.py: the study's stages ran different versions of it"):
        code_files(stale)


def test_a_kept_study_is_made_by_the_same_code_only_when_every_code_file_matches():
    kept = {"egolens/model.py": "aa", "stages/train.py": "bb"}
    assert same_code(kept, {"egolens/model.py": "aa", "stages/train.py": "bb", "egolens/other.py": "ff"})
    assert not same_code(kept, {"egolens/model.py": "aa", "stages/train.py": "b2"})
    assert not same_code(kept, {"egolens/model.py": "aa"})                  # a file gone from this checkout
    assert not same_code({}, {"egolens/model.py": "aa"})                     # kept without its code files
    assert kept_recipe("old", PARAMS, "abc1234", None, kept)["code_files"] == kept
    assert "code_files" not in kept_recipe("old", PARAMS, "abc1234", None)


def test_a_kept_readme_says_where_the_study_came_from_and_how_to_rerun_it():
    with_preset = kept_readme(kept_recipe("paper", PARAMS, "abc1234", "paper"), "refs/exps/ab/cd/paper", "f00ba47")
    assert with_preset.startswith("# paper: a study kept for comparison\n")
    assert "git revision `refs/exps/ab/cd/paper` (commit f00ba47)" in with_preset
    assert "made by the code of commit abc1234" in with_preset
    assert "3 seeds × 6000 episodes, intersection-v0 at 1 Hz, 13 s, gamma 0.95, n_steps 1, DQfD off" in with_preset
    assert "`python -m presets paper` re-runs the recipe" in with_preset
    assert "`python -m presets keep paper --ref refs/exps/ab/cd/paper`" in with_preset
    without = kept_readme(kept_recipe("mine", PARAMS, "abc1234", None), "f00ba47", "f00ba47")
    assert "at git revision commit f00ba47:" in without and "`f00ba47` (commit" not in without
    assert "No preset is named mine" in without and "python -m presets mine" not in without


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def keep(repo, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}                     # this checkout's presets and egolens
    return subprocess.run([sys.executable, "-m", "presets", "keep", *args], cwd=repo, env=env, capture_output=True,
                          text=True)


def test_keep_writes_a_revisions_aggregate_with_its_recipe_and_readme(tmp_path):
    repo = tmp_path / "study"
    (repo / "results").mkdir(parents=True)
    git(repo, "init", "-q")
    git(repo, "commit", "-q", "--allow-empty", "-m", "before the study")
    (repo / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    files = {"headline.json": '{"seeds": 3}\n', "holds.csv": "finding,n_seeds,n_holds,holds\nworks,3,2,2/3\n",
             "summary.csv": "metric,mean\na,1\n"}
    for name, text in files.items():
        (repo / "results" / name).write_text(text)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "study")
    made_by = git(repo, "rev-parse", "--short", "HEAD")
    (repo / "notes.txt").write_text("later\n")                        # a later commit leaves results/ alone
    (repo / "results" / "headline.json").write_text('{"seeds": 99}\n')  # and the working tree is not what is kept
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-q", "-m", "notes")
    head = git(repo, "rev-parse", "--short", "HEAD")

    done = keep(repo, "faithful")
    assert done.returncode == 0, done.stderr
    kept = repo / "results" / "faithful"
    assert {name: (kept / name).read_text() for name in files} == files
    recipe = json.loads((kept / "recipe.json").read_text())
    assert recipe == {"name": "faithful", "preset": "faithful", "code": made_by, "seeds": [0, 1, 2],
                      "train.episodes": 6000, "env.id": "intersection-v0", "env.policy_frequency": 1,
                      "env.duration": 13, "agent.gamma": 0.95, "agent.n_steps": 1, "agent.dqfd.enabled": False}
    readme = (kept / "README.md").read_text()
    assert f"git revision `HEAD` (commit {head})" in readme and f"code of commit {made_by}" in readme

    again = keep(repo, "faithful", "--ref", made_by)
    assert again.returncode != 0 and "results/faithful exists; pass --force" in again.stderr
    assert keep(repo, "faithful", "--ref", made_by, "--force").returncode == 0
    assert f"at git revision commit {made_by}" in (kept / "README.md").read_text()

    (repo / "dvc.lock").write_text(yaml.safe_dump(LOCK))                # a study with its stages' lock
    git(repo, "add", "dvc.lock", "results/headline.json")
    git(repo, "commit", "-q", "-m", "a study with a dvc.lock")
    assert keep(repo, "locked").returncode == 0
    locked = json.loads((repo / "results" / "locked" / "recipe.json").read_text())
    assert locked["code_files"] == {"egolens/model.py": "aa", "stages/train.py": "bb"}
    stale = {"stages": {**LOCK["stages"], "evaluate@0": {"deps": [{"path": "egolens/model.py", "md5": "ee"}]}}}
    (repo / "dvc.lock").write_text(yaml.safe_dump(stale))
    git(repo, "add", "dvc.lock")
    git(repo, "commit", "-q", "-m", "a stale study")
    refused = keep(repo, "stale")
    assert refused.returncode != 0 and "egolens/model.py: the study's stages ran different versions" in refused.stderr
    assert not (repo / "results" / "stale").exists()

    outside = keep(repo, "../elsewhere")
    assert outside.returncode != 0 and "a kept study's name is letters" in outside.stderr
    lacking = keep(repo, "older", "--ref", "HEAD~4")                 # before the study
    assert lacking.returncode != 0 and "has no results/headline.json" in lacking.stderr
    assert not (repo / "results" / "older").exists()


def test_the_report_reads_every_kept_study_as_a_dvc_dep_and_the_tiny_study_copies_them():
    from presets.__main__ import COPIED
    from stages.report import KEPT

    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]["deps"]
    for folder in KEPT:
        assert {f"{folder.as_posix()}/{name}" for name in ("headline.json", "holds.csv", "recipe.json")} <= set(deps)
        assert folder.as_posix() in COPIED and (ROOT / folder / "recipe.json").exists()
