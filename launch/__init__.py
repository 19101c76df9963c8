"""Starting jobs: on one machine today (`python -m training.train`); multi-process launchers
(`launch.local`, SLURM, Kubernetes, Cloud TPU) build on `jax.distributed` next (issue 4)."""
