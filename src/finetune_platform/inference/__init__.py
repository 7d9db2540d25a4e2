"""Inference: load a trained adapter on its base model and predict, one text or a whole file."""
