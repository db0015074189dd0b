"""What a training run is and what it leaves behind: the params that identify it (a resume
state must match them; a checkpoint embeds them and nothing else) and its per-episode log."""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

from dvclive import Live

from egolens.config import Params
from egolens.dqn import RESUME_FORMAT, EpisodeRecord, training_summary


def run_identity(params: Params, demonstrations: str | None = None) -> dict:
    """Everything that changes the run's numbers: the env, the agent, the episode budget and the
    number of envs (and the resume format). Nothing else, so no other edit changes a checkpoint's bytes:
    options that are off (one-step exploration, unobserved intentions, DQfD) are left out, so adding such
    an option keeps the checkpoints of runs that do not use it byte for byte.

    demonstrations: with agent.dqfd enabled (required then), a digest of the demonstrations file,
    so a run is identified by the demonstrations it learned from."""
    env = params.env.model_dump(mode="json")
    agent = params.agent.model_dump(mode="json")
    if not params.env.observe_intentions:
        del env["observe_intentions"]
    if params.agent.exploration.duration == "one":
        del agent["exploration"]
    identity = {"format": RESUME_FORMAT, "env": env, "agent": agent,
                "episodes": params.train.episodes, "num_envs": params.train.num_envs}
    if not params.agent.dqfd.enabled:
        del agent["dqfd"]
    elif demonstrations is None:
        raise ValueError("a DQfD run is identified by its demonstrations: give their digest")
    else:
        identity["demonstrations"] = demonstrations
    return identity


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_log(records: list[EpisodeRecord], directory: str | Path) -> None:
    """Per-episode metrics through dvclive into `directory` (step = episode in finish order; its
    metrics.json summary = `training_summary`, the last 100 episodes). Replaces what was there."""
    shutil.rmtree(directory, ignore_errors=True)
    with Live(str(directory), report=None, save_dvc_exp=False, dvcyaml=False) as live:
        for record in records:
            live.log_metric("return", round(record.ret, 6))
            live.log_metric("length", record.length)
            live.log_metric("arrived", int(record.outcome == "arrived"))
            live.log_metric("crashed", int(record.outcome == "collision"))
            live.log_metric("epsilon", round(record.epsilon, 6))
            if not math.isnan(record.loss):
                live.log_metric("loss", round(record.loss, 6))
            live.next_step()
        live.summary = training_summary(records)
