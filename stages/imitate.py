"""imitate@seed: behaviour cloning, the representation bound (a diagnostic, never the study's agent).
The reference network, initialised as agent seed N's DQN, is fitted by cross-entropy to the
clairvoyant planner's actions on the demonstrations, then plays evaluate's held-out episodes
greedily (the episodes every agent and reference policy plays: paired), and the demonstration
episodes themselves (closed loop on the very episodes it was cloned from: a network that fits the
planner's steps but fails there fails by compounding errors or by what it could not fit, not by
generalising to new episodes). Writes models/seed<N>/imitation.pt and
results/seeds/seed<N>/imitation/{metrics.json,episodes.csv}."""

from __future__ import annotations

from tqdm import tqdm

from egolens import checkpoint
from egolens.demonstrations import load_demonstrations
from egolens.env import make_runner
from egolens.evaluation import episode_outcomes, summarize_episodes
from egolens.imitation import NETWORK_KEYS, action_accuracy, clone_policy, imitation_network
from egolens.numbers import EXACT
from egolens.play import play
from stages import DEMONSTRATIONS, MODELS, seed_args, seed_results
from stages.networks import deterministic
from stages.outputs import write_csv, write_json


def main() -> None:
    params, seed = seed_args(__doc__)
    deterministic(seed)
    demos = load_demonstrations(DEMONSTRATIONS)
    net = imitation_network(params.agent, len(params.env.features), seed)
    run, optimizer = clone_policy(net, demos.obs, demos.action, params.imitation, seed,
                                  progress=lambda items, desc: tqdm(items, desc=f"{desc} seed {seed}", unit="epoch"))
    accuracy = action_accuracy(net, demos.obs, demos.action)
    env_seeds = params.evaluate.env_seeds
    own_seeds = [int(s) for s in demos.env_seed]
    with make_runner(params.env, min(params.evaluate.num_envs, len(env_seeds), len(own_seeds))) as runner:
        results = play(net, runner, env_seeds)
        own = play(net, runner, own_seeds)
    driving = summarize_episodes(results, params.evaluate.bootstrap_resamples, seed)
    on_demonstrations = summarize_episodes(own, params.evaluate.bootstrap_resamples, seed)
    metrics = {"train": {"accuracy": accuracy["all"],
                         "accuracy_by_action": {k: v for k, v in accuracy.items() if k != "all"},
                         "final_loss": run.epoch_loss[-1], "epochs": len(run.epoch_loss), "adam_steps": run.steps,
                         "demonstration_steps": len(demos), "demonstration_episodes": demos.episodes},
               "driving": driving, "driving_on_demonstrations": on_demonstrations}
    print(f"seed {seed} imitation: training accuracy {accuracy['all']:.3f}; held-out " +
          ", ".join(f"{k} {v['mean']:.3f}" for k, v in driving.items()) + "; on its demonstration episodes " +
          ", ".join(f"{k} {v['mean']:.3f}" for k, v in on_demonstrations.items()))
    meta = {"config": {"env": params.env.model_dump(mode="json"),
                       "agent": {k: getattr(params.agent, k) for k in NETWORK_KEYS},
                       "imitation": params.imitation.model_dump(mode="json"),
                       "demonstrations": params.demonstrations.model_dump(mode="json")},
            "seed": seed, "versions": checkpoint.versions(), "epochs": len(run.epoch_loss)}
    checkpoint.save(MODELS / f"seed{seed}" / "imitation.pt", checkpoint.checkpoint_dict(net, optimizer, meta))
    out = seed_results(seed) / "imitation"
    write_json(out / "metrics.json", metrics)
    write_csv(out / "episodes.csv", episode_outcomes(results), EXACT)


if __name__ == "__main__":
    main()
