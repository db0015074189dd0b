"""Real DVC remote round trips: push a tiny study (a copy of the session's), clone it fresh, pull, and
find nothing left to run.

Two remotes are exercised: a shared local directory and an S3 bucket served by moto's standalone
server on 127.0.0.1 (no network, fake credentials).
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml

from tests.conftest import BIN, commit, copy_study, digests, environment, run

pytestmark = pytest.mark.slow
DVC = str(BIN / "dvc")
TARGETS: tuple[str, ...] = ()
"""Stages `dvc repro`/`dvc status` are given: none, i.e. the whole pipeline."""
OUTPUT_DIRS = ("models", "data", "results")
PUSHED_OUTPUTS = ("data/seed0", "data/seed1")
"""Cached outputs the remote must hold (the checkpoints are `cache: false`: git carries them)."""
BUCKET = "egolens-dvc"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def cached_files(root: Path) -> set[str]:
    """Content-addressed files (`files/md5/xx/...`) below a DVC cache or remote root, relative to it."""
    return {str(p.relative_to(root)) for p in (root / "files").rglob("*") if p.is_file()}


def lock_keys(repo: Path, *paths: str) -> set[str]:
    """The cache keys (`files/md5/xx/...`) that dvc.lock records for the given outputs."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    md5 = {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}
    return {f"files/md5/{md5[path][:2]}/{md5[path][2:]}" for path in paths}


def assert_pushed(study: Path, remote_keys: set[str]) -> None:
    """The remote holds the study's cached outputs, and only files from its cache.

    Not equality: the run-cache also stores the `cache: false` outputs (metrics, CSVs) in the local
    cache, but `dvc push` sends only the outputs that are cached (the rest live in git).
    """
    assert lock_keys(study, *PUSHED_OUTPUTS) <= remote_keys <= cached_files(study / ".dvc" / "cache")


@pytest.fixture(scope="module")
def study(tiny_study, tmp_path_factory) -> Path:
    """A committed git + DVC repo in which the tiny study of seeds [0, 1] has been reproduced once: a
    copy of the session's, which these tests change (they add remotes)."""
    return copy_study(tiny_study, tmp_path_factory.mktemp("study") / "repo")


def add_remote(repo: Path, name: str, url: str, *settings: tuple[str, str], default: bool = False) -> None:
    """`dvc remote add [-d]` (plus `dvc remote modify` for each setting) and commit .dvc/config."""
    run(repo, DVC, "remote", "add", *(("-d",) if default else ()), name, url)
    for key, value in settings:
        run(repo, DVC, "remote", "modify", name, key, value)
    commit(repo, f"remote {name}")


def fresh_clone(repo: Path, dest: Path) -> Path:
    """A `git clone` of `repo`: code, params, dvc.lock, checkpoints and uncached tables, but no DVC-cached data."""
    run(repo.parent, "git", "clone", "-q", str(repo), str(dest))
    for checkpoint in ("agent.pt", "untrained.pt"):                # git carries the checkpoints
        path = f"models/seed0/{checkpoint}"
        assert (dest / path).read_bytes() == (repo / path).read_bytes()
    assert not (dest / "data" / "seed0").exists()
    return dest


def assert_pull_restores_study(study: Path, clone: Path, *remote: str) -> None:
    """`dvc pull [-r NAME]` gives the clone the study's exact bytes, and DVC sees nothing to do."""
    reference = digests(study, *OUTPUT_DIRS)
    assert {"models/seed0/agent.pt", "models/seed0/untrained.pt", "data/seed0/rollouts_trained.npz",
            "results/seeds/seed0/attributions/ig_vehicles.csv"} <= set(reference)
    assert digests(clone, *OUTPUT_DIRS) != reference               # the clone starts without cached outputs
    run(clone, DVC, "pull", *remote)
    assert digests(clone, *OUTPUT_DIRS) == reference
    assert "Data and pipelines are up to date" in run(clone, DVC, "status", *TARGETS)
    assert "Running stage" not in run(clone, DVC, "repro", *TARGETS)


def assert_pull_fails(clone: Path, *remote: str) -> None:
    """`dvc pull` fails and restores nothing (so a round trip cannot pass trivially)."""
    failed = subprocess.run([DVC, "pull", *remote], cwd=clone, capture_output=True, text=True, env=environment())
    assert failed.returncode != 0, failed.stdout
    assert not (clone / "data" / "seed0").exists()


def test_a_shared_directory_remote_round_trips_the_study(study, tmp_path):
    store = tmp_path / "shared" / "egolens-dvc"
    store.mkdir(parents=True)
    add_remote(study, "localremote", str(store), default=True)
    run(study, DVC, "push")                                        # to the default remote
    assert_pushed(study, cached_files(store))

    clone = fresh_clone(study, tmp_path / "clone")
    (tmp_path / "empty").mkdir()
    run(clone, DVC, "remote", "add", "--local", "empty", str(tmp_path / "empty"))
    assert_pull_fails(clone, "-r", "empty")
    assert_pull_restores_study(study, clone)                       # the default remote came with the clone


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answers(url: str, server: subprocess.Popen, timeout: float = 60.0) -> None:
    """Block until `url` gives any HTTP response; fail if the server exits or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"moto_server exited with code {server.returncode}"
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"moto_server did not answer on {url} within {timeout} s")


@pytest.fixture(scope="module")
def s3_endpoint():
    """The URL of a moto S3 server running on 127.0.0.1 for this module; terminated afterwards."""
    port = free_port()
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answers(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def s3_client(endpoint: str):
    """A boto3 S3 client for the moto server, with moto's fake credentials."""
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        region_name=CREDENTIALS["AWS_DEFAULT_REGION"])


def bucket_keys(client, prefix: str) -> set[str]:
    """Every key under `prefix` in the bucket, relative to the prefix."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {obj["Key"][len(prefix):] for page in pages for obj in page.get("Contents", [])}


def test_an_s3_remote_round_trips_the_study(study, s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for key, value in CREDENTIALS.items():                         # `run` passes os.environ on to dvc
        monkeypatch.setenv(key, value)
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    add_remote(study, "s3remote", f"s3://{BUCKET}/store", ("endpointurl", s3_endpoint))
    assert bucket_keys(client, "store/") == set()
    run(study, DVC, "push", "-r", "s3remote")
    assert_pushed(study, bucket_keys(client, "store/"))

    clone = fresh_clone(study, tmp_path / "clone")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")                        # the clone keeps its keys in .dvc/config.local
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert_pull_fails(clone, "-r", "s3remote")                     # no credentials, no data
    run(clone, DVC, "remote", "modify", "--local", "s3remote", "access_key_id", CREDENTIALS["AWS_ACCESS_KEY_ID"])
    run(clone, DVC, "remote", "modify", "--local", "s3remote", "secret_access_key",
        CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    assert "access_key_id" not in (clone / ".dvc" / "config").read_text()
    assert run(clone, "git", "status", "--porcelain") == ""        # .dvc/config.local is git-ignored
    assert_pull_restores_study(study, clone, "-r", "s3remote")
