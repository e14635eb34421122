"""Algorithm Distillation (Laskin et al. 2022): in-context RL from learning histories."""
