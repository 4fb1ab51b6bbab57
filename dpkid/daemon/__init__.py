"""The node process: the trio driver of the core, libp2p, the JSON-RPC server,
the SQLite store, the double-sign guard file, config, the domain-validation
checker, logs and metrics."""
