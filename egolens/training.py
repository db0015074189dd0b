"""What a training run is and what it leaves behind: the params that identify it (a resume
state must match them; a checkpoint embeds them and nothing else) and its per-episode log."""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
from dvclive import Live

from egolens.collector import RESUME_FORMAT, TrainingEpisode
from egolens.config import Params


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


def write_log(records: list[TrainingEpisode], directory: str | Path) -> None:
    """Per-episode metrics through dvclive into `directory` (step = episode in finish order; its
    metrics.json summary = `training_summary`, the last 100 episodes). Replaces what was there."""
    shutil.rmtree(directory, ignore_errors=True)
    with Live(str(directory), report=None, save_dvc_exp=False, dvcyaml=False) as live:
        for record in records:
            live.log_metric("return", round(record.ret, 6))
            live.log_metric("length", record.length)
            live.log_metric("arrived", int(record.arrived))
            live.log_metric("crashed", int(record.collided))
            live.log_metric("epsilon", round(record.epsilon, 6))
            if not math.isnan(record.loss):
                live.log_metric("loss", round(record.loss, 6))
            live.next_step()
        live.summary = training_summary(records)


def training_summary(records: list[TrainingEpisode], window: int = 100) -> dict[str, float | int]:
    """Headline numbers of a run: totals and the rates over its last `window` episodes."""
    last = records[-window:]
    return {
        "episodes": len(records),
        "steps": records[-1].steps if records else 0,
        "updates": records[-1].updates if records else 0,
        "final_epsilon": round(records[-1].epsilon, 6) if records else 1.0,
        f"return_last{window}": round(float(np.mean([r.ret for r in last])), 6) if last else 0.0,
        f"success_last{window}": round(float(np.mean([r.arrived for r in last])), 6) if last else 0.0,
        f"collision_last{window}": round(float(np.mean([r.collided for r in last])), 6) if last else 0.0,
    }
