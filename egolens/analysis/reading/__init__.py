"""Reading the network: its weights (circuits), what its layers hold (lens, neurons, probes) and where
attention points (attention_agreement)."""
