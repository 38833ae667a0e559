"""Pure affinity algorithms shared by the proxy and the operator (no I/O)."""
