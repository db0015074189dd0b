"""train@seed: DQN on intersection-v0; writes the trained and the untrained network and the
training log. Resumes from `.resume/train_seed<N>.pt` if a run with the same params was cut."""

from __future__ import annotations

import math
import shutil

from dvclive import Live
from tqdm import tqdm

from egolens import checkpoint
from egolens.config import Params, fingerprint
from egolens.dqn import RESUME_FORMAT, EpisodeRecord, Trainer, training_summary
from egolens.env import make_runner
from stages import MODELS, RESUME, seed_args, seed_results


def write_log(records: list[EpisodeRecord], directory: str) -> None:
    """Per-episode metrics through dvclive (step = episode in finish order); summary = last 100."""
    shutil.rmtree(directory, ignore_errors=True)
    with Live(directory, report=None, save_dvc_exp=False, dvcyaml=False) as live:
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


def main() -> None:
    params, seed = seed_args(__doc__)
    n_entities, in_features = params.env.vehicles_count, len(params.env.features)
    trainer = Trainer(params.agent, seed, params.train.episodes, params.train.num_envs, in_features, n_entities)
    meta = {"config": _run_identity(params), "seed": seed, "versions": checkpoint.versions()}
    out = MODELS / f"seed{seed}"
    checkpoint.save(out / "untrained.pt", {"state_dict": trainer.initial_state_dict,
                                           "optimizer": trainer.agent.optimizer.state_dict(),
                                           "egolens": {**meta, "steps": 0, "episode": 0}})

    run_key = fingerprint(_run_identity(params), seed)
    resume_path = RESUME / f"train_seed{seed}.pt"
    if resume_path.exists():
        saved = checkpoint.load_safe(resume_path)
        if saved.get("fingerprint") == run_key:
            trainer.load_state_dict(saved["trainer"])
            print(f"resuming seed {seed} at episode {len(trainer.records)}")

    def save_resume(state: dict) -> None:
        checkpoint.save(resume_path, {"fingerprint": run_key, "trainer": state})

    bar = tqdm(total=params.train.episodes, initial=len(trainer.records), desc=f"train seed {seed}", unit="ep")

    def progress(record: EpisodeRecord) -> None:
        bar.update(1)
        recent = trainer.records[-100:]
        bar.set_postfix(ret=f"{sum(r.ret for r in recent) / len(recent):.2f}", eps=f"{record.epsilon:.2f}")

    runner = make_runner(params.env, params.train.num_envs)
    try:
        records = trainer.run(runner, save_resume, params.train.checkpoint_every, progress)
    finally:
        runner.close()
        bar.close()

    agent = trainer.agent
    checkpoint.save(out / "agent.pt", checkpoint.checkpoint_dict(
        agent.value_net, agent.optimizer, {**meta, "steps": agent.steps, "episode": len(records)}))
    write_log(records, str(seed_results(seed) / "train"))
    resume_path.unlink(missing_ok=True)


def _run_identity(params: Params) -> dict:
    """Everything that changes the run's numbers (what a resume state must match, and all of the
    params a checkpoint embeds: nothing else, so no other edit changes its bytes)."""
    return {"format": RESUME_FORMAT, "env": params.env.model_dump(mode="json"),
            "agent": params.agent.model_dump(mode="json"),
            "episodes": params.train.episodes, "num_envs": params.train.num_envs}


if __name__ == "__main__":
    main()
