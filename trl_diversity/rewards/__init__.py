"""Group-level rewards: rewards that score the `k` completions of one prompt together (the diversity reward is one)."""
