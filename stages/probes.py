"""probes@seed: a linear probe per (site, target) of the trained network beside its controls (the
raw observation, the untrained network at the same site, the control task), split by episode,
with bootstrap CIs over held-out episodes; the table, summary.json and the figure."""

from __future__ import annotations

import numpy as np

from egolens.analysis.reading.probe_study import Recording, primary_rows, probe_study, site_verdicts, summarize
from egolens.analysis.reading.probes import held_out_episodes
from egolens.figures import figure_png
from egolens.probe_plots import probe_scores
from stages import NETWORKS, load_rollout, seed_args, seed_results
from stages.outputs import write_bytes, write_csv, write_json
from stages.probe_data import load_probe_targets


def main() -> None:
    params, seed = seed_args(__doc__)
    cfg = params.probes
    keys = ("obs", "episode", "step", *cfg.sites)
    recordings = {label: Recording(load_rollout(seed, label, keys), *load_probe_targets(seed, label))
                  for label in NETWORKS}
    table = probe_study(recordings["trained"], recordings["untrained"], cfg, seed,
                        progress=lambda what: print(f"seed {seed} probes: {what}", flush=True))
    out = seed_results(seed) / "probes"
    write_csv(out / "probes.csv", table)
    write_csv(out / "sites.csv", site_verdicts(table))
    episodes = recordings["trained"].arrays["episode"]
    held_out = held_out_episodes(episodes, cfg.held_out, seed)
    write_json(out / "summary.json", summarize(table, len(held_out), len(np.unique(episodes))))
    write_bytes(out / "probes.png", figure_png(probe_scores(primary_rows(table))))


if __name__ == "__main__":
    main()
