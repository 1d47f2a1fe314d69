"""Training-side helpers: building the openly licensed training corpus for the biLM."""
