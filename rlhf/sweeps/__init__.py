"""Hydra multirun: one status file per job, W&B naming per sweep, the end-of-sweep report, jobs
under `accelerate launch` (SLURM), and the comparison table and plots over a sweep's jobs."""
