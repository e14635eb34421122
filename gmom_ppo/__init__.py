"""On Proximal Policy Optimization's Heavy-tailed Gradients (Garg et al. 2021, arXiv:2102.10264).

PPO for continuous control, heavy-tail (kurtosis) diagnostics of its per-sample gradients, and
GMOM, the geometric median of block means, as a robust replacement for PPO's clipping heuristics.
Results table: gmom_ppo/README.md.
"""
