"""Scoring engines: one interface (`base.ScoringEngine`), one module per backend."""
