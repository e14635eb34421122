"""Transformer Dynamics Models (Schubert et al. 2023): generalist world models for control."""
