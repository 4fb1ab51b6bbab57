"""Tendermint consensus (arXiv 1807.04938, Algorithm 1) as a pure state machine,
and the validity rules of blocks, commits and evidence (``validity``)."""
