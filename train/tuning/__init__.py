"""Hyperparameter search: the search space, the shared study, the worker processes, the trials and the summary."""
