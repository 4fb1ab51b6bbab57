"""One node: consensus, mempool and state machine behind one step API.

``wire`` is the gossip and sync messages, ``effects`` what a step asks its
shell to do (``Ready``), ``mempool`` the pending transactions, and ``core``
the ``NodeCore`` that composes them.
"""
