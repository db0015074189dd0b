"""The real stages on tiny runs: byte-identical reruns, kill/resume, and `dvc repro` end to end."""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from egolens.names import FIGURES
from egolens.report import format_number
from presets.__main__ import study_copy
from tests.conftest import BIN, commit, copy_study, digests, environment, run, tiny_params

pytestmark = pytest.mark.slow


def project_copy(tmp_path: Path, params: dict) -> Path:
    """The repository's code and pipeline in a fresh git + DVC repo, with `params` (as the tiny preset builds it)."""
    return study_copy(tmp_path / "repo", params)


def train(repo: Path) -> str:
    return run(repo, sys.executable, "-m", "stages.train", "--seed", "0")


def test_training_twice_gives_identical_bytes_and_a_killed_run_resumes_to_them(tmp_path):
    repo = project_copy(tmp_path, tiny_params(episodes=30))
    train(repo)
    reference = digests(repo, "models", "results")
    expected = {"models/seed0/agent.pt", "models/seed0/untrained.pt", "results/seeds/seed0/train/metrics.json"}
    assert expected <= set(reference)
    shutil.rmtree(repo / "models")
    shutil.rmtree(repo / "results" / "seeds")
    train(repo)
    assert digests(repo, "models", "results") == reference

    shutil.rmtree(repo / "models")
    shutil.rmtree(repo / "results" / "seeds")
    resume = repo / ".resume" / "train_seed0.pt"
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", "--seed", "0"], cwd=repo, env=environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not resume.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before its first resume state; make the run longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (repo / "models" / "seed0" / "agent.pt").exists()
    assert "resuming seed 0 at episode" in train(repo)
    assert digests(repo, "models", "results") == reference
    assert not resume.exists()


def test_dvc_repro_runs_every_stage_once_then_nothing(tiny_study, tmp_path):
    repo, first = tiny_study.repo, tiny_study.first_repro           # the session's study: read, never changed
    for stage in ("train", "evaluate", "rollout", "circuits", "attributions", "neurons", "interventions"):
        for seed in (0, 1):
            assert f"Running stage '{stage}@{seed}'" in first
    for stage in ("reference", "aggregate", "plots", "report"):
        assert f"Running stage '{stage}'" in first
    reference = pd.read_csv(repo / "results/reference/episodes.csv")
    assert set(reference["policy"]) == {"constant_slower", "constant_idle", "constant_faster", "rule_based",
                                        "clairvoyant"}
    assert reference.groupby("policy")["env_seed"].apply(sorted).map(tuple).nunique() == 1   # paired episodes
    summary = pd.read_csv(repo / "results/summary.csv").set_index("metric")
    assert summary.loc["evaluate.trained.mean_return.mean", "n_seeds"] == 2
    assert {"seed0", "seed1"} <= set(summary.columns)
    figures = {p.stem for p in (repo / "results/figures").glob("*.png")}
    assert figures == set(FIGURES)
    report = (repo / "results/report.md").read_text()
    assert "## Findings" in report
    compared = report.split("## Beside the kept studies")[1] if "## Beside the kept studies" in report else ""
    assert "| `top_conductance_neurons_beat_random` |" in compared
    assert "| `ig_complete` |" not in compared                          # a sanity check: reported apart, not compared
    assert "| `ig_complete` |" in report.split("## Sanity checks per seed")[1]
    # every template is filled, except patching: tiny rollouts have no clean/corrupted pairs
    missing = [line for line in report.splitlines() if line.startswith("- Not available in this run")]
    names = re.findall(r"`([^`]+)`", missing[0]) if missing else []
    assert all(name.startswith("m:interventions.path_patching_restored.") for name in names), names
    # every metric a finding reads is produced by the library's summaries (a NaN value is allowed)
    script = ("from egolens.findings import missing_metrics\nfrom stages.aggregate import load_seed\n"
              "metrics, _ = load_seed(0, 100)\nprint(missing_metrics(metrics))")
    assert run(repo, sys.executable, "-c", script).strip().endswith("[]")
    for seed in (0, 1):
        evaluation = yaml.safe_load((repo / f"results/seeds/seed{seed}/evaluate.json").read_text())
        assert set(evaluation) == {"trained", "untrained"}
        assert set(evaluation["trained"]) == {"success_rate", "collision_rate", "timeout_rate", "mean_return",
                                              "mean_length"}
        rates = [evaluation["trained"][k]["mean"] for k in ("success_rate", "collision_rate", "timeout_rate")]
        assert sum(rates) == pytest.approx(1.0)
    rollouts = digests(repo, "data")
    assert {"data/seed0/rollouts_trained.npz", "data/seed0/steps_untrained.csv", "data/seed0/vehicles_trained.csv",
            "data/seed0/videos/trained_episode000.gif"} <= set(rollouts)
    second = run(repo, str(BIN / "dvc"), "repro")
    assert "Running stage" not in second
    assert "up to date" in second
    rerun = copy_study(tiny_study, tmp_path / "rerun")
    run(rerun, str(BIN / "dvc"), "repro", "--force", "--single-item", "rollout@0")
    assert digests(rerun, "data") == rollouts                    # a rerun writes the same bytes
    assert "up to date" in run(rerun, str(BIN / "dvc"), "status")
    metrics = json.loads(run(repo, str(BIN / "dvc"), "metrics", "show", "--json"))
    files = {path: body["data"] for rev in metrics.values() for path, body in rev["data"].items()}
    assert set(files) == {"results/headline.json", "results/seeds/seed0/driving.json",
                          "results/seeds/seed1/driving.json", "results/seeds/seed0/scenes/metrics.json",
                          "results/seeds/seed1/scenes/metrics.json"}
    numbers = [v for data in files.values() for v in pd.json_normalize(data).iloc[0].tolist()]
    assert len(numbers) <= 60                                  # dvc exp show stays readable
    assert files["results/headline.json"]["sanity_checks"]["ig_complete"] in (0, 1, 2)
    assert "ig_complete" not in files["results/headline.json"]["holds"]          # a sanity check, not a finding
    assert "return.tsv" in run(repo, str(BIN / "dvc"), "plots", "show", "--json")


EVERYDAY_DROP = "^(models|data|results)(/[^:]*)?$"
"""The README's everyday `dvc exp show --only-changed --drop` pattern: no output-file hash columns."""


def one_seed_baseline(study, dest: Path) -> Path:
    """A copy of the session's study cut down to seed 0 and committed: seed 1's outputs removed, and
    `dvc repro` reruns only the stages whose params or inputs the cut changes (nothing of seed 0's)."""
    repo = copy_study(study, dest)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["seeds"] = [0]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(repo, "git", "rm", "-r", "-q", "models/seed1", "results/seeds/seed1")
    for outputs in ("models/seed1", "results/seeds/seed1", "data/seed1"):     # and the DVC-cached ones
        shutil.rmtree(repo / outputs)
    ran = re.findall(r"Running stage '([^']+)'", run(repo, str(BIN / "dvc"), "repro"))
    assert not [stage for stage in ran if stage.endswith("@0")], ran
    commit(repo, "baseline: seed 0")
    return repo


def test_experiments_change_a_param_and_compare_with_the_baseline(tiny_study, tmp_path):
    repo = one_seed_baseline(tiny_study, tmp_path / "repo")
    dvc = str(BIN / "dvc")
    assert "Ran experiment" in run(repo, dvc, "exp", "run", "-n", "heads1", "-S", "agent.heads=1")
    shown = pd.read_csv(io.StringIO(run(repo, dvc, "exp", "show", "--csv")))
    assert set(shown["agent.heads"]) == {1, 2}
    diff = json.loads(run(repo, dvc, "exp", "diff", "HEAD", "heads1", "--json"))
    assert diff["params"]["params.yaml"]["agent.heads"] == {"old": 2, "new": 1, "diff": -1}
    assert any("ceiling_fraction" in column for column in shown.columns)      # the headline metric is shown
    everyday = pd.read_csv(io.StringIO(run(repo, dvc, "exp", "show", "--only-changed", "--drop",
                                           EVERYDAY_DROP, "--csv")))   # the README's everyday command
    print(f"everyday dvc exp show: {len(everyday.columns)} columns: {list(everyday.columns)}")
    assert len(everyday.columns) <= 30, list(everyday.columns)
    circuits = json.loads((repo / "results/seeds/seed0/circuits/summary.json").read_text())
    assert "head1" not in json.dumps(circuits["rel_diff_trained_vs_untrained"])  # the workspace: one head
    check_report_states_the_run(repo)
    run(repo, dvc, "plots", "diff", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").exists()



def check_report_states_the_run(repo: Path) -> None:
    """The report of a non-default run (1 seed, 1 head, interventions.top_k 2, 3 training episodes)
    states those settings, and every "mean [low, high]" it prints is a row of summary.csv."""
    report = (repo / "results/report.md").read_text()
    findings = report.split("## Findings per seed")[0]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["agent"]["heads"] == 1 and params["seeds"] == [0] and params["train"]["episodes"] == 3
    assert "(1 head, 64-wide" in findings and "head_rank2" not in findings
    assert "last 3 of 3 training episodes" in findings and "One seed: no interval over seeds" in report
    k = params["interventions"]["top_k"]
    assert f"the {k} top-conductance neurons" in findings and f"random {k}-neuron sets" in findings
    summary = pd.read_csv(repo / "results/summary.csv")
    rows = {(format_number(r.mean), format_number(r.ci_low), format_number(r.ci_high))
            for r in summary.itertuples(index=False)}
    triples = re.findall(r"(-?[0-9][0-9.e+-]*) \[(-?[0-9][0-9.e+-]*), (-?[0-9][0-9.e+-]*)\]", findings)
    assert triples, findings
    assert set(triples) <= rows, set(triples) - rows
    holds = pd.read_csv(repo / "results/holds.csv")
    for count in re.findall(r"(\d+/\d+) seeds", findings):
        assert count in set(holds["holds"]), count


def test_bad_params_stop_dvc_repro_before_any_output_is_touched(tiny_study, tmp_path):
    repo = copy_study(tiny_study, tmp_path / "repo")               # every stage run and committed
    dvc = str(BIN / "dvc")
    marker = "results/params_valid.txt"      # validate's own output: the only file DVC may remove
    before = {k: v for k, v in digests(repo, "models", "results").items() if k != marker}
    good = (repo / "params.yaml").read_text()
    for bad in (good.replace("num_envs: 2", "num_env: 2", 1),           # a typo under train:
                good + "\nreprot:\n  x: 1\n"):                           # an unknown top-level section
        (repo / "params.yaml").write_text(bad)
        done = subprocess.run([dvc, "repro"], cwd=repo, capture_output=True, text=True, env=environment())
        assert done.returncode != 0
        assert "unknown key" in done.stdout + done.stderr
        assert {k: v for k, v in digests(repo, "models", "results").items() if k != marker} == before
        status = run(repo, "git", "status", "--porcelain")
        assert status.strip() == "M params.yaml", status


def test_adding_a_seed_leaves_every_existing_seeds_stages_up_to_date(tiny_study, tmp_path):
    repo = copy_study(tiny_study, tmp_path / "repo")               # seeds [0, 1], every stage run
    dvc = str(BIN / "dvc")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["seeds"] == [0, 1]
    params["seeds"] = [0, 1, 2]
    params["attributions"]["max_steps"] += 1                  # not a train param: no checkpoint changes
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    existing = ("train@0", "evaluate@0", "train@1", "evaluate@1")
    status = json.loads(run(repo, dvc, "status", "--json", *existing))
    assert status == {}, status
    out = run(repo, dvc, "repro", *existing, "train@2")
    assert "Running stage 'train@2'" in out and not any(f"Running stage '{s}'" in out for s in existing), out
