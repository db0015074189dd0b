"""Shared fixtures: tiny configs, a toy vector env, an independent reference forward pass, and the
session's tiny study (the real pipeline, built once for every test that reads it)."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import presets
from egolens.config import AgentConfig
from egolens.model import EgoAttentionNetwork
from egolens.runner import EnvRunner
from presets.__main__ import study_copy

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def tiny_agent(**overrides) -> AgentConfig:
    """A small network and DQN that learn on toy data in milliseconds."""
    cfg = dict(heads=2, feature_size=8, embedding_layers=[8, 8], output_layers=[8, 8], batch_size=4,
               memory_capacity=50, target_update=3)
    cfg.update(overrides)
    return AgentConfig(**cfg)


def tiny_net(heads: int = 2, seed: int = 0) -> EgoAttentionNetwork:
    """An 8-wide ego-attention network (embeddings 7→8→8, output 8→8→3) with seeded default init."""
    torch.manual_seed(seed)
    return EgoAttentionNetwork(in_features=7, feature_size=8, heads=heads, embedding_layers=[8, 8], output_layers=[8])


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params(seeds=(0,), episodes=8, eval_episodes=4) -> dict:
    """params.yaml with the tiny preset (presets/tiny.yaml) and these seeds and run lengths."""
    params = presets.apply(default_params(), presets.overrides("tiny"))
    params["seeds"] = list(seeds)
    params["train"]["episodes"] = episodes
    params["evaluate"]["episodes"] = eval_episodes
    return params


# --- the real pipeline: commands in a study's repository, and the session's tiny study ---------------------

def environment() -> dict:
    """os.environ with this venv's bin first (the stages' `python`, `dvc`) and no PYTHONPATH."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = ""
    return env


def run(repo: Path, *cmd: str) -> str:
    """Run `cmd` in `repo`; fail the test with its output unless it succeeds; what it printed."""
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=environment())
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def digests(repo: Path, *dirs: str) -> dict[str, str]:
    """sha256 of every file under the given directories of `repo`, by path relative to it."""
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in dirs for p in sorted((repo / d).rglob("*")) if p.is_file()}


def commit(repo: Path, message: str) -> None:
    """Stage everything git does not ignore and commit it."""
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)


SMALLER = {"evaluate.bootstrap_resamples": 100, "reference.bootstrap_resamples": 100, "reference.replan": "never",
           "demonstrations.episodes": 1}
"""Below the tiny preset where no assertion needs more: the planner plans once per episode and plays
one demonstration, the fewest bootstrap resamples. Each value is one the pipeline accepts (the tiny
preset's 2 closed-loop episodes are already the fewest: one per half; its 3 rollouts too: with 2, the
probes hold out one episode and have nothing left to fit at some sites, and steering stops)."""
TINY_STUDY_PARAMS = presets.apply(tiny_params(seeds=(0, 1), episodes=3, eval_episodes=1), SMALLER)
"""The session's tiny study: the tiny preset on seeds [0, 1], 3 training episodes, 1 evaluation
episode per agent, and SMALLER. tests/test_sharing.py's machines run the same params, so that this
study is their single-machine reference."""


@dataclass(frozen=True)
class TinyStudy:
    repo: Path
    """A git + DVC repository (the repository's code, TINY_STUDY_PARAMS) with every stage reproduced
    and committed. Read it, clone it, or copy it (`copy_study`): never change it."""
    first_repro: str
    """What its one `dvc repro`, which computed every stage, printed."""


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> TinyStudy:
    """The tiny study of two seeds, built once per test session for the tests that read it (or a
    copy of it): a full `dvc repro` costs minutes, a copy seconds."""
    repo = study_copy(tmp_path_factory.mktemp("tiny-study") / "repo", TINY_STUDY_PARAMS)
    first = run(repo, str(BIN / "dvc"), "repro")
    commit(repo, "the tiny study, seeds [0, 1]")
    return TinyStudy(repo, first)


def copy_study(study: TinyStudy, dest: Path) -> Path:
    """A copy of the study at `dest` (git history, DVC cache, workspace; 34 MB): changes to it leave the
    study alone, and DVC finds every stage up to date as in the study."""
    shutil.copytree(study.repo, dest, symlinks=True)
    return dest


class ToyEnv:
    """A toy episodic env with the gymnasium API the runner uses (reset(seed=...), step(a)).

    Episode of seed s lasts 2 + s % 4 steps and ends by termination (a crash when s % 3 == 0)
    if s is even, by truncation if s is odd. Observations and rewards depend on (s, t, action).
    """

    def __init__(self, entities: int = 4, features: int = 7) -> None:
        self.shape = (entities, features)
        self.seed, self.t = 0, 0

    def _obs(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.t])
        obs = rng.uniform(-1, 1, self.shape).astype(np.float32)
        obs[:, 0] = (rng.uniform(size=self.shape[0]) > 0.3).astype(np.float32)
        obs[0, 0] = 1.0
        return obs

    def reset(self, seed: int):
        self.seed, self.t = seed, 0
        return self._obs(), {}

    def step(self, action: int):
        self.t += 1
        s = self.seed
        ended = self.t >= 2 + s % 4
        reward = float(action) * 0.5 - 0.1 * self.t + (s % 5) * 0.01
        terminated, truncated = ended and s % 2 == 0, ended and s % 2 == 1
        return self._obs(), reward, terminated, truncated, {"crashed": terminated and s % 3 == 0}

    def close(self) -> None:
        pass


def toy_runner(num_envs: int, entities: int = 4) -> EnvRunner:
    """An EnvRunner of `num_envs` toy envs (worker processes when more than one)."""
    return EnvRunner([partial(ToyEnv, entities) for _ in range(num_envs)])


class SlowToyEnv(ToyEnv):
    """A ToyEnv whose steps take time: step t of the episode of seed s sleeps delay·((s + t) % 3)
    seconds and a reset 3·delay (as a simulator's, slower than a step), so that of two envs
    now one, now the other is the slower. Appends each step's wall-clock (start, end) to `log`
    (a file: the env runs in a worker process)."""

    def __init__(self, delay: float, log: Path | None = None, entities: int = 4) -> None:
        super().__init__(entities)
        self.delay, self.log = delay, log

    def reset(self, seed: int):
        time.sleep(3 * self.delay)
        return super().reset(seed)

    def step(self, action: int):
        start = time.time()
        time.sleep(self.delay * ((self.seed + self.t) % 3))
        result = super().step(action)
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(f"{start} {time.time()}\n")
        return result


def slow_toy_runner(delays: list[float], logs: list[Path] | None = None) -> EnvRunner:
    """`SlowToyEnv`s in worker processes, env i with delays[i] (its steps logged to logs[i])."""
    return EnvRunner([partial(SlowToyEnv, d, logs[i] if logs else None) for i, d in enumerate(delays)])


def reference_q(state_dict: dict[str, torch.Tensor], obs: torch.Tensor, heads: int) -> torch.Tensor:
    """Q-values from an rl-agents state_dict, computed loop by loop (independent of egolens.model).

    obs: [B, E, F] -> [B, 3].
    """
    sd = state_dict

    def mlp(prefix: str, x: torch.Tensor, n_hidden: int) -> torch.Tensor:
        for i in range(n_hidden):
            x = torch.relu(x @ sd[f"{prefix}.layers.{i}.weight"].T + sd[f"{prefix}.layers.{i}.bias"])
        return x

    out = []
    for b in range(obs.shape[0]):
        ego = mlp("ego_embedding", obs[b, 0], 2)
        entities = [ego] + [mlp("others_embedding", obs[b, j], 2) for j in range(1, obs.shape[1])]
        size = ego.shape[0]
        d = size // heads
        q = sd["attention_layer.query_ego.weight"] @ ego
        concat = []
        for h in range(heads):
            rows = slice(h * d, (h + 1) * d)
            scores = []
            for j, e in enumerate(entities):
                k = sd["attention_layer.key_all.weight"][rows] @ e
                present = j == 0 or obs[b, j, 0] >= 0.5
                scores.append(float(q[rows] @ k) / math.sqrt(d) if present else -math.inf)
            weights = torch.softmax(torch.tensor(scores), dim=0)
            concat.append(sum(w * (sd["attention_layer.value_all.weight"][rows] @ e)
                              for w, e in zip(weights, entities)))
        combined = sd["attention_layer.attention_combine.weight"] @ torch.cat(concat)
        x = mlp("output_layer", (combined + ego) / 2, 2)
        out.append(x @ sd["output_layer.predict.weight"].T + sd["output_layer.predict.bias"])
    return torch.stack(out)


def random_obs(batch: int, entities: int = 15, seed: int = 0, absent_fraction: float = 0.4) -> torch.Tensor:
    """Observation-like tensors [batch, entities, 7] with some absent (all-zero) vehicles."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(batch, entities, 7, generator=g) * 2 - 1
    present = torch.rand(batch, entities, generator=g) > absent_fraction
    present[:, 0] = True
    obs[..., 0] = present.float()
    return obs * present[..., None]
