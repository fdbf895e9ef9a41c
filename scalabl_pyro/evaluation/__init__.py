"""Scoring a predictive distribution: metrics (:mod:`.metrics`: accuracy, ECE, NLL, Brier,
AURC, OOD detection) and their figures (:mod:`.plots`). Pure functions of probabilities and
labels, used by prediction and by the experiments."""
