"""One study across machines: each machine runs a slice of the seeds and pushes it (a git branch for
the lock entries and git-tracked outputs, the DVC remote for the cached ones); a collector takes the
slices (`python -m presets collect`), pulls, and `dvc repro` runs only the study-level stages. Also:
a fresh clone carries the checkpoints and reruns only what is missing, `python -m presets remote`
says what remote to configure, and recipes run on several machines come back through
`dvc exp push` / `dvc exp pull`.

The slow tests share one moto S3 server, one bare git repository (the shared git remote), the two
machines' slices and the collector (module fixtures, built once). The single-machine study the
collector must equal is the session's tiny study (tests/conftest.py: the same code and params, every
stage computed in one repository of its own). The machines do not reuse its work: their clones start
with empty DVC caches and an empty bucket, so each one computes its seed's stages itself (restoring
them from the study's run-cache would leave "seeds run on two machines" proving nothing), and the
collector restores them from what the machines pushed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from egolens import remotes, sharing
from presets.__main__ import study_copy
from tests.conftest import BIN, TINY_STUDY_PARAMS, commit, digests, environment, run
from tests.test_remotes import BUCKET, CREDENTIALS, bucket_keys, s3_client, s3_endpoint  # noqa: F401

DVC = str(BIN / "dvc")
SEEDS = (0, 1)
PARAMS = TINY_STUDY_PARAMS
"""The machines' and the collector's params: the session's tiny study's, whose seeds are SEEDS."""
OUTPUT_DIRS = ("models", "data", "results")
PREFIX = "store/"


# --- the library: which lock entries a collector may take -------------------------------------------------

def entry(params: dict, deps: tuple[tuple[str, str], ...] = ()) -> dict:
    return {"cmd": "python -m stages.x", "deps": [{"path": p, "md5": m} for p, m in deps],
            "params": {"params.yaml": params}, "outs": [{"path": "out", "md5": "1"}]}


STUDY = {"params.yaml": {"seeds": [0, 1], "agent": {"gamma": 0.9, "loss": "l2"}, "train": {"episodes": 4}}}


def test_differing_keys_names_each_leaf_that_differs():
    params = STUDY["params.yaml"]
    assert sharing.differing_keys({"agent": {"gamma": 0.9, "loss": "l2"}, "train.episodes": 4}, params) == []
    assert sharing.differing_keys({"agent": {"gamma": 0.95, "loss": "l2"}, "train.episodes": 8}, params) == [
        "agent.gamma", "train.episodes"]
    assert sharing.differing_keys({"agent": {"gamma": 0.9}}, params) == ["agent.loss"]      # a key only we have
    assert sharing.differing_keys({"agent.n_steps": 3}, params) == ["agent.n_steps"]        # a key we lack


def test_a_per_seed_stage_of_another_recipe_is_refused_naming_the_key():
    md5 = {"stages/train.py": "aa"}.get
    lock = {"stages": {"train@0": entry({"agent": {"gamma": 0.99, "loss": "l2"}}),
                       "evaluate@0": entry({"train.episodes": 4}, deps=(("stages/train.py", "bb"),))}}
    with pytest.raises(ValueError, match=r"train@0 \(agent.gamma\); evaluate@0 \(code stages/train.py\)"):
        sharing.take_entries(lock, STUDY, md5, "origin/slice-0")


def test_study_level_stages_are_taken_only_when_made_under_this_studys_params():
    md5 = {"stages/train.py": "aa"}.get
    same = entry(STUDY["params.yaml"], deps=(("stages/train.py", "aa"), ("models/seed0/agent.pt", "zz")))
    lock = {"stages": {"validate": same, "aggregate": entry({"seeds": [0]}),
                       "train@0": entry({"agent": {"gamma": 0.9, "loss": "l2"}})}}
    taken = sharing.take_entries(lock, STUDY, md5, "slice")
    assert list(taken) == ["validate", "train@0"]                 # aggregate over seed 0 only: left to dvc repro
    assert sharing.output_paths(taken) == ["out", "out"]


def test_merging_refuses_a_stage_recorded_differently():
    one = {"train@0": entry({"train.episodes": 4})}
    assert sharing.merge_entries(one, one, "b") == one
    other = {"train@0": {**entry({"train.episodes": 4}), "outs": [{"path": "out", "md5": "2"}]}}
    with pytest.raises(ValueError, match="train@0: b recorded other outputs"):
        sharing.merge_entries(one, other, "b")


# --- the remote kinds: what `python -m presets remote` configures and says ------------------------------

def test_each_kind_becomes_the_default_remote_with_its_own_command():
    assert remotes.configure_commands("shared", "/srv/egolens-dvc") == [
        ["dvc", "remote", "add", "--default", "--force", "shared", "/srv/egolens-dvc"]]
    assert remotes.configure_commands("s3", "s3://b/e", endpoint_url="http://minio:9000", local=True) == [
        ["dvc", "remote", "add", "--local", "--default", "--force", "s3remote", "s3://b/e"],
        ["dvc", "remote", "modify", "--local", "s3remote", "endpointurl", "http://minio:9000"]]


@pytest.mark.parametrize(("kind", "url", "endpoint", "message"), [
    ("gdrive", "gdrive://x", None, "the kinds are shared, s3"),
    ("s3", "/srv/egolens-dvc", None, "starts with s3://"),
    ("shared", "s3://b/e", None, "use `s3`"),
    ("shared", "/srv/egolens-dvc", "http://minio:9000", "only an s3 remote"),
])
def test_a_wrong_kind_or_url_is_refused_naming_what_is_allowed(kind, url, endpoint, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        remotes.configure_commands(kind, url, endpoint_url=endpoint)


def test_the_message_names_every_kind_with_its_command():
    message = remotes.what_to_configure()
    for key, kind in remotes.KINDS.items():
        assert f"python -m presets remote {key} {kind.example}" in message
    assert "Sharing results" in message and "\n" not in message


# --- the real thing on tiny studies ----------------------------------------------------------------------

def ran_stages(output: str) -> list[str]:
    """The stages `dvc repro` ran (its own "Running stage" lines), in order."""
    return re.findall(r"Running stage '([^']+)'", output)


def clone(source: Path | str, dest: Path, *options: str) -> Path:
    run(dest.parent, "git", "clone", "-q", *options, str(source), str(dest))
    return dest


def per_seed_stages() -> tuple[str, ...]:
    """The per-seed stages of dvc.yaml (the `matrix` ones)."""
    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    return tuple(name for name, stage in stages.items() if "matrix" in stage)


def upstream_of_seeds() -> set[str]:
    """The study-level stages a slice runs because its per-seed stages depend on them."""
    return {"validate", "demonstrations"}


@pytest.fixture(scope="module")
def aws():
    """moto's fake credentials in the environment DVC inherits, and no real AWS config read."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in CREDENTIALS.items():
            patch.setenv(key, value)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        patch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        patch.delenv("AWS_PROFILE", raising=False)
        yield


@pytest.fixture(scope="module")
def origin(tmp_path_factory, s3_endpoint, aws) -> Path:  # noqa: F811
    """The shared git remote (a bare repository) holding the study's commit, seeds [0, 1], whose
    default DVC remote is the moto bucket."""
    s3_client(s3_endpoint).create_bucket(Bucket=BUCKET)
    root = tmp_path_factory.mktemp("shared")
    study = study_copy(root / "repo", PARAMS)
    run(study, sys.executable, "-m", "presets", "remote", "s3", f"s3://{BUCKET}/{PREFIX.rstrip('/')}",
        "--endpoint-url", s3_endpoint)
    commit(study, "the study, seeds [0, 1], with its S3 remote")
    return clone(study, root / "origin.git", "--bare")


def run_slice(origin: Path, dest: Path, seed: int, *more: str) -> tuple[Path, dict[str, str]]:
    """Machine `seed`: clone, run its seed's stages, commit them on branch slice-<seed>, push both ways."""
    repo = clone(origin, dest)
    out = {f"dvc repro --glob '*@{seed}' {' '.join(more)}".strip(): run(repo, DVC, "repro", "--glob", f"*@{seed}",
                                                                         *more)}
    run(repo, "git", "checkout", "-q", "-b", f"slice-{seed}")
    commit(repo, f"seed {seed}")
    out[f"git push origin slice-{seed}"] = run(repo, "git", "push", "origin", f"slice-{seed}")
    out["dvc push"] = run(repo, DVC, "push")
    return repo, out


@pytest.fixture(scope="module")
def machines(origin, tmp_path_factory) -> dict[int, tuple[Path, dict[str, str]]]:
    """Two machines, one per seed, side by side (machine 0 also runs `reference`, which every seed
    shares): each one's workspace and what its commands printed."""
    root = tmp_path_factory.mktemp("machines")
    with ThreadPoolExecutor(max_workers=2) as pool:
        work = {0: pool.submit(run_slice, origin, root / "machine0", 0, "reference"),
                1: pool.submit(run_slice, origin, root / "machine1", 1)}
        return {seed: future.result() for seed, future in work.items()}


@pytest.fixture(scope="module")
def single(tiny_study) -> Path:
    """The single-machine study of both seeds: the session's tiny study, committed (read and cloned
    here, never changed). Its one `dvc repro` ran every per-seed stage of both seeds itself."""
    assert PARAMS["seeds"] == list(SEEDS)
    assert yaml.safe_load((tiny_study.repo / "params.yaml").read_text()) == PARAMS
    assert {f"{stage}@{seed}" for stage in per_seed_stages() for seed in SEEDS} <= set(
        ran_stages(tiny_study.first_repro))
    return tiny_study.repo


@pytest.fixture(scope="module")
def collector(origin, machines, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A third clone takes both slices, pulls, and reproduces; its workspace and what it printed."""
    repo = clone(origin, tmp_path_factory.mktemp("collector") / "collector")
    out = {"python -m presets collect origin/slice-0 origin/slice-1":
           run(repo, sys.executable, "-m", "presets", "collect", "origin/slice-0", "origin/slice-1")}
    out["dvc pull"] = run(repo, DVC, "pull")
    out["dvc repro"] = run(repo, DVC, "repro")
    out["dvc status"] = run(repo, DVC, "status")
    return repo, out


def transcript(outputs: dict[str, str]) -> str:
    return "\n".join(f"$ {cmd}\n{text.rstrip()}" for cmd, text in outputs.items())


@pytest.mark.slow
def test_seeds_run_on_two_machines_make_the_single_machine_study(machines, collector, single):
    for seed, (_, out) in machines.items():
        ran = ran_stages(next(iter(out.values())))
        assert set(ran) == upstream_of_seeds() | {f"{s}@{seed}" for s in per_seed_stages()} | (
            {"reference"} if seed == 0 else set()), ran
    print(f"machine 0:\n{transcript(machines[0][1])}\nmachine 1:\n{transcript(machines[1][1])}")
    repo, out = collector
    print(f"collector:\n{transcript(out)}")
    assert ran_stages(out["dvc repro"]) == ["aggregate", "plots", "report"]   # no per-seed stage, nothing upstream
    assert "Data and pipelines are up to date" in out["dvc status"]
    combined, reference = digests(repo, *OUTPUT_DIRS), digests(single, *OUTPUT_DIRS)
    assert {"results/report.md", "results/summary.csv", "models/seed1/agent.pt",
            "data/seed1/rollouts_trained.npz"} <= set(reference)
    assert combined == reference
    print(f"{len(combined)} files under {', '.join(OUTPUT_DIRS)} equal the single-machine study's")


@pytest.mark.slow
def test_a_slice_pushed_twice_sends_nothing_new(origin, machines, collector, s3_endpoint, tmp_path):  # noqa: F811
    """A rerun of machine 0's task (a fresh clone of its branch) runs nothing and pushes nothing: every
    object in the bucket keeps its bytes (ETag)."""
    client = s3_client(s3_endpoint)
    before = {key: client.head_object(Bucket=BUCKET, Key=PREFIX + key)["ETag"] for key in bucket_keys(client, PREFIX)}
    assert before
    again = clone(origin, tmp_path / "machine0-again", "-b", "slice-0")
    out = {"dvc pull --allow-missing": run(again, DVC, "pull", "--allow-missing")}   # seed 1 has no hash here
    out["dvc repro --glob '*@0' reference"] = run(again, DVC, "repro", "--glob", "*@0", "reference")
    out["dvc push"] = run(again, DVC, "push")
    out["git push origin slice-0"] = run(again, "git", "push", "origin", "slice-0")
    print(f"machine 0's task again:\n{transcript(out)}")
    assert ran_stages(out["dvc repro --glob '*@0' reference"]) == []
    assert "Everything is up to date" in out["dvc push"]
    assert "Everything up-to-date" in out["git push origin slice-0"]
    after = {key: client.head_object(Bucket=BUCKET, Key=PREFIX + key)["ETag"] for key in bucket_keys(client, PREFIX)}
    assert after == before
    print(f"the bucket's {len(after)} objects keep their ETags")


@pytest.mark.slow
def test_a_collector_of_another_recipe_refuses_the_slices_naming_the_key(origin, machines, tmp_path):
    collector = clone(origin, tmp_path / "collector")
    params = yaml.safe_load((collector / "params.yaml").read_text())
    params["agent"]["gamma"] = 0.5
    (collector / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "presets", "collect", "origin/slice-0"], cwd=collector,
                          capture_output=True, text=True, env=environment())
    assert done.returncode != 0
    assert "train@0 (agent.gamma)" in done.stderr and "rollout@0 (agent.gamma)" in done.stderr, done.stderr
    assert run(collector, "git", "status", "--porcelain").strip() == "M params.yaml"   # nothing taken


@pytest.mark.slow
def test_a_fresh_clone_has_the_checkpoints_and_reruns_only_what_is_missing(single, tmp_path):
    fresh = clone(single, tmp_path / "fresh")
    assert digests(fresh, "models") == {k: v for k, v in digests(single, "models").items()
                                        if not k.endswith("imitation.pt")}   # git carries the DQN checkpoints
    assert not (fresh / "data" / "seed0").exists() and not (fresh / "data" / "demonstrations").exists()
    # no `dvc pull`: the rollouts, the demonstrations and the cached analysis tables are missing
    out = run(fresh, DVC, "repro", "evaluate@0", "rollout@0", "circuits@0")
    print(f"fresh clone:\n$ dvc repro evaluate@0 rollout@0 circuits@0\n{out.rstrip()}")
    assert ran_stages(out) == ["validate", "demonstrations", "rollout@0", "circuits@0"]   # not train@0, evaluate@0
    original = digests(single, "data", "results/seeds/seed0/circuits")
    assert digests(fresh, "data", "results/seeds/seed0/circuits") == {
        k: v for k, v in original.items() if not k.startswith("data/seed1/")}           # the same bytes again
    assert "up to date" in run(fresh, DVC, "status", "train@0", "evaluate@0", "rollout@0", "circuits@0")


@pytest.mark.slow
def test_without_a_remote_presets_remote_says_what_to_configure_and_dvc_still_works(single, collector, s3_endpoint,  # noqa: F811
                                                                                      tmp_path):
    fresh = clone(single, tmp_path / "fresh")
    assert run(fresh, DVC, "remote", "list").strip() == ""          # the project as shipped: no remote
    failed = subprocess.run([DVC, "pull"], cwd=fresh, capture_output=True, text=True, env=environment())
    assert failed.returncode != 0 and "No remote provided" in failed.stdout + failed.stderr
    said = subprocess.run([sys.executable, "-m", "presets", "remote"], cwd=fresh, capture_output=True, text=True,
                          env=environment())
    print(f"$ python -m presets remote\n{said.stderr}")
    assert said.returncode != 0 and said.stderr.strip() == remotes.what_to_configure()
    for command in (("plots", "show", "--json"), ("exp", "show", "--csv"), ("status",), ("metrics", "show")):
        run(fresh, DVC, *command)                                    # a clone without a remote works otherwise
    configured = run(fresh, sys.executable, "-m", "presets", "remote", "s3", f"s3://{BUCKET}/{PREFIX.rstrip('/')}",
                     "--endpoint-url", s3_endpoint, "--local")
    assert run(fresh, "git", "status", "--porcelain") == ""           # --local: .dvc/config.local, git-ignored
    assert "s3remote" in run(fresh, sys.executable, "-m", "presets", "remote")
    run(fresh, DVC, "pull")                                           # the collector pushed nothing; the slices did
    print(f"$ python -m presets remote s3 ... --local\n{configured}")
    assert digests(fresh, *OUTPUT_DIRS) == digests(single, *OUTPUT_DIRS)


TINY_SWEEP = {"common": {"seeds": "[0]"}, "target": "evaluate", "recipes": {"tiny-gamma": {"agent.gamma": 0.8}}}
"""A one-recipe sweep (train + evaluate of seed 0 under another gamma) for the sweep on two machines."""


@pytest.mark.slow
def test_sweep_collect_reads_experiments_pulled_from_the_git_remote_as_local_ones(origin, machines, tmp_path):
    runner = clone(origin, tmp_path / "runner", "-b", "slice-0")          # has the reference policies' episodes
    (runner / "sweeps" / "recipes.yaml").write_text(yaml.safe_dump(TINY_SWEEP, sort_keys=False))
    run(runner, "git", "checkout", "-q", "-b", "sweep")
    commit(runner, "a tiny sweep")
    run(runner, "git", "push", "-q", "origin", "sweep")
    run(runner, DVC, "pull", "--allow-missing")                       # seed 0's outputs (seed 1 has none here)
    sets = [arg for o in ("seeds=[0]", "agent.gamma=0.8") for arg in ("-S", o)]
    assert "Ran experiment" in run(runner, DVC, "exp", "run", "-n", "tiny-gamma", *sets, "evaluate")
    pushed = run(runner, DVC, "exp", "push", "origin", "tiny-gamma")
    run(runner, sys.executable, "-m", "sweeps.run", "collect")

    collector = clone(origin, tmp_path / "collector", "-b", "sweep")
    pulled = run(collector, DVC, "exp", "pull", "origin", "tiny-gamma")
    print(f"$ dvc exp push origin tiny-gamma\n{pushed}\n$ dvc exp pull origin tiny-gamma\n{pulled}")
    run(collector, sys.executable, "-m", "sweeps.run", "collect")
    local, remote = (repo / "results" / "sweep" / "recipes.csv" for repo in (runner, collector))
    table = local.read_text()
    assert table.splitlines()[1].startswith("tiny-gamma,0,"), table
    assert remote.read_text() == table
    assert (collector / "results/sweep/recipes.png").read_bytes() == (runner / "results/sweep/recipes.png").read_bytes()
