"""Tendermint consensus (arXiv 1807.04938, Algorithm 1) as a pure state machine."""
