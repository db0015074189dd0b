"""train@seed: DQN on intersection-v0; writes the trained and the untrained network and the
training log. Resumes from `.resume/train_seed<N>.pt` if a run with the same params was cut."""

from __future__ import annotations

from tqdm import tqdm

from egolens import checkpoint
from egolens.collector import Trainer, TrainingEpisode
from egolens.config import fingerprint
from egolens.demonstrations import load_demonstrations
from egolens.env import make_runner
from egolens.training import file_digest, run_identity, write_log
from stages import DEMONSTRATIONS, MODELS, RESUME, seed_args, seed_results


def main() -> None:
    params, seed = seed_args(__doc__)
    n_entities, in_features = params.env.vehicles_count, len(params.env.features)
    # DVC always lists the demonstrations as a dep (deps cannot depend on a param); only DQfD reads them
    dqfd = params.agent.dqfd.enabled
    demos = load_demonstrations(DEMONSTRATIONS) if dqfd else None
    identity = run_identity(params, file_digest(DEMONSTRATIONS) if dqfd else None)
    trainer = Trainer(params.agent, seed, params.train.episodes, params.train.num_envs, in_features, n_entities,
                      demonstrations=demos)
    meta = {"config": identity, "seed": seed, "versions": checkpoint.versions()}
    out = MODELS / f"seed{seed}"
    checkpoint.save(out / "untrained.pt", {"state_dict": trainer.initial_state_dict,
                                           "optimizer": trainer.agent.optimizer.state_dict(),
                                           "egolens": {**meta, "steps": 0, "episode": 0}})

    run_key = fingerprint(identity, seed)
    resume_path = RESUME / f"train_seed{seed}.pt"
    if resume_path.exists():
        saved = checkpoint.load_safe(resume_path)
        if saved.get("fingerprint") == run_key:
            trainer.load_state_dict(saved["trainer"])
            print(f"resuming seed {seed} at episode {len(trainer.records)}")

    def save_resume(state: dict) -> None:
        checkpoint.save(resume_path, {"fingerprint": run_key, "trainer": state})

    bar = tqdm(total=params.train.episodes, initial=len(trainer.records), desc=f"train seed {seed}", unit="ep")

    def progress(record: TrainingEpisode) -> None:
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


if __name__ == "__main__":
    main()
