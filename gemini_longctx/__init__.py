"""Gemini 1.5 (Gemini Team 2024): a sparse-MoE long-context LM recipe and the long-context
evaluations (NLL by position, needle in a haystack, multi-needle, MRCR-style). See README.md."""
