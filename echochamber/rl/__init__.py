"""RL post-training: one shared core (rollout -> reward -> advantage -> update) and three algorithms."""
