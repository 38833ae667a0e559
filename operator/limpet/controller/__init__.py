"""The control plane: the StickyService operator (kopf)."""
