"""Hydra launcher plugin `hydra/launcher=slurm_accelerate`: SLURM jobs trained under accelerate.

Hydra only instantiates launchers found in the `hydra_plugins` namespace package, so the class
lives here; what it runs on the nodes is in rlhf/sweeps/cluster.py.
"""
