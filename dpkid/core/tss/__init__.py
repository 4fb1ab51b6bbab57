"""Threshold signing by the validators: weights, DKG rules, X.509 formats and the node's agent."""
