"""Starting jobs: joining `jax.distributed` (`distributed`), N processes on one machine
(`python -m launch.local`), and cluster launchers (SLURM, Kubernetes JobSet, Cloud TPU VM)."""
