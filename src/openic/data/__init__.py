"""Data input: RecordIO / .lst datasets, MXNet-compatible augmentation, loaders."""
