"""The methods that followed: rejection sampling, rounds, RLAIF, Safe RLHF, Pairwise PPO, critic-free RL."""
