"""Training: the sparse network's training loop (exact resume, torchrun) and the dense baseline's."""
