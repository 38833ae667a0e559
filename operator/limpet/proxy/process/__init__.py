"""The proxy process: command line, settings, plan state, admin API, workers, stats."""
