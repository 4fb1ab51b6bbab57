"""The pure core: everything every node must compute identically.

Nothing under ``dpkid/core/`` does I/O, reads a clock or uses global
randomness, and nothing here imports from outside ``dpkid/core/``
(tests/test_purity.py checks both by folder). The daemon (``dpkid/daemon/``)
and the simulator (``dpkid/sim/``) drive the same core.
"""
