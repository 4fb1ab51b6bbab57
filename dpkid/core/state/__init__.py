"""The PKI state machine (SPEC.md): records, transactions, the sparse Merkle tree."""
