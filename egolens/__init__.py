"""egolens: an ego-attention DQN on intersection-v0, trained and taken apart under DVC."""
