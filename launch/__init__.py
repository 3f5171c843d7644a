"""How agora starts: the ``agora`` CLI, configs, and the recipes for mpirun, srun and batch schedulers."""
