"""The run skeleton both stages share: settings and SAVE_DIR, the epoch loop, the optimizer, loading weights."""
