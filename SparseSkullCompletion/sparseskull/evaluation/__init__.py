"""Evaluation: metrics, the validation report with its baselines, benchmarks and the bundled demo."""
