"""Gato (Reed et al. 2022): one transformer over tokenised text, images and agent timesteps."""
