"""Ortega et al. 2021, "Shaking the foundations: delusions in sequence models for interaction
and control" (arXiv:2110.10819): factual vs counterfactual teaching of sequence-model policies.
"""
