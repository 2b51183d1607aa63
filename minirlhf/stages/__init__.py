"""The RLHF stages of the 2022 recipe, and the pieces they share (configs, run bookkeeping, experience)."""
