"""Is the posterior trustworthy? ArviZ ``InferenceData`` and the importance diagnostics of a
fitted posterior (:mod:`.posterior`), PSIS / k-hat / LOO maths (:mod:`.importance`) and
their figures (:mod:`.plots`)."""
