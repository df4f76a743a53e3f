"""What an entry point needs to run a Lightning job from a Hydra config: building callbacks and loggers,
a safe shutdown, sweeps that survive a failed job, resuming, atomic checkpoints, out-of-memory advice."""
