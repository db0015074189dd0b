"""Intervening on the network: ablation, activation and path patching, weight edits, steering along a
direction, and designed counterfactual scenes, each judged in closed loop."""
