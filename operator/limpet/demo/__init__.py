"""The end-to-end scaling demo behind ``make run``."""
