"""Infrastructure every floor knows: files and checkpoints, logs, errors, seeds, devices, processes."""
