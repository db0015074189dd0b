"""steering@seed: add α·direction at chosen sites of the trained network (the most selective safety
probe's weights, SLOWER − FASTER, random directions of equal norm) and drive closed loop on the
interventions stage's held-out env seeds; each (site, direction, α) paired with α = 0."""

from __future__ import annotations

import pandas as pd

from egolens.analysis.intervening.steering_study import scales_of, site_directions, steering_study, summarize
from egolens.analysis.reading.probe_study import Recording, fitted_probe, steering_choice
from egolens.config import held_out_seeds
from egolens.env import make_runner
from egolens.figures import figure_png
from egolens.numbers import EXACT
from egolens.probe_plots import steering_dose_response
from stages import load_rollout, seed_args, seed_results
from stages.networks import deterministic, load_net
from stages.outputs import write_bytes, write_csv, write_json
from stages.probe_data import load_probe_targets


def main() -> None:
    params, seed = seed_args(__doc__)
    deterministic(seed)
    cfg = params.steering
    arrays = load_rollout(seed, "trained", ("obs", "episode", "step", "action", *cfg.sites))
    recording = Recording(arrays, *load_probe_targets(seed, "trained"))
    verdicts = pd.read_csv(seed_results(seed) / "probes" / "sites.csv")
    scales = scales_of(arrays, cfg.sites)
    sites = {}
    for site in cfg.sites:
        target = steering_choice(verdicts, site, cfg.safety_targets)
        probe = fitted_probe(recording, site, target, params.probes, seed)
        sites[site] = (scales[site], site_directions(arrays, site, probe, target, cfg.random_directions, seed))
    net = load_net(params, seed, "trained")
    env_seeds = held_out_seeds(params.interventions.env_seed, cfg.episodes)
    with make_runner(params.env, cfg.num_envs) as runner:
        episodes, comparison = steering_study(net, runner, env_seeds, sites, cfg.alphas, cfg.bootstrap_resamples,
                                              seed, progress=lambda what: print(f"seed {seed} steering: {what}",
                                                                                flush=True))
    out = seed_results(seed) / "steering"
    write_csv(out / "episodes.csv", episodes, EXACT)
    write_csv(out / "steering.csv", comparison)
    write_json(out / "summary.json", summarize(comparison, scales))
    write_bytes(out / "steering.png", figure_png(steering_dose_response(comparison)))


if __name__ == "__main__":
    main()
