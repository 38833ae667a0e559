"""The data plane: the sticky-session HTTP proxy."""
