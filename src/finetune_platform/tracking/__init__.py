"""Experiment tracking (MLflow runs) and, later, the model registry."""
