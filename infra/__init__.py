"""Infrastructure every part of the code may use: files and checkpoints, logs, errors, seeds, devices, processes."""
