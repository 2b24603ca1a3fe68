"""RL settings that other packages judge runs by, in a module that imports nothing.

The report decides which cells ran "at the default KL" without importing the trainer: `rl.config`
pulls in the evaluation config, the sampler, torch and transformers (~6 s on a 2-core CPU), which a
report over finished run folders never needs.
"""

# The paper's KL coefficient, for PPO, GRPO and REINFORCE alike.
DEFAULT_KL_COEF = 1e-3
