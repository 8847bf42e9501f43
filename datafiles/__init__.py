"""Image data on disk: the formats the dataset table reads, and a fabricator of small datasets in those formats."""
