"""The paper's campaign of runs from one TOML spec: plan, local queue, SLURM job arrays (submitit), status.

Reads files only (results.json, checkpoints, locks, logs) and launches every run as the bash driver a user
would type; it imports no entry point, model or engine."""
