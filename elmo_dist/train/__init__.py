"""Training the biLM (trainer, config) and scoring a model (evaluate, polysemy_pairs).

The build tooling for the built-in model (corpus recipe, packaging, model card, the evaluation
command line) lives outside the package, in the repository's tools/ directory.
"""
