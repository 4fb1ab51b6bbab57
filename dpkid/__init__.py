"""dpkid: a decentralized public key infrastructure on a BFT ledger."""

__version__ = "0.1.0"
