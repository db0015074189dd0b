"""Attribution: how much each input, vehicle or neuron explains of a Q-value (IG, conductance, Shapley),
the baselines and integration schemes they use, and the checks that they are faithful."""
