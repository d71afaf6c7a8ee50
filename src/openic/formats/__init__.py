"""Torch-free MXNet-compatible file formats: RecordIO, .lst, manifests, images, tar safety."""
