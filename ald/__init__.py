"""Actor-Learner Distillation (Parisotto & Salakhutdinov 2021): a gated Transformer-XL learner
trained with V-trace on data collected by LSTM actors that are continually distilled from it."""
