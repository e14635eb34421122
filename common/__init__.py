"""Thin shared infrastructure: device, logging, checkpointing, seeding, distributed, plotting.

Nothing paper-specific lives here (see ../README.md and the conventions).
"""
