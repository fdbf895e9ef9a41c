"""Plumbing every layer may use: random state (:mod:`.rng`), logging (:mod:`.logging_utils`)
and atomic file writes (:mod:`.atomic`). Nothing here knows about models or data."""
