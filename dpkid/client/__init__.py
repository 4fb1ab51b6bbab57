"""What a user's side runs: the RPC client, the light client that verifies the
node's answers against the chain, certificate verification and X.509 export."""
