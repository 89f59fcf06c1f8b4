"""Preparation of paired MR/CT training data: registration, body masks, normalization, slices."""
