"""Learners: GAE, PPO, the exploration stack, checkpoints, DDP helpers and the symbol-agent training loop."""
