"""Volumes and data: the Volume type, medical image IO, grid changes (resample), data sets on disk,
training pairs, augmentation, the bundled sample and generated data (synth/)."""
