"""Kube I/O: where the cluster is, an async API client, and the watches.

- ``config``: the cluster endpoint and credentials (like kubectl), one frozen value.
- ``client``: the asyncio API client (get, list, apply, patch, delete, watch).
- ``informer``: list+watch of one resource with a label selector, re-listing after 410.
- ``watchhub``: those watches shared per namespace by every StickyService there.
- ``watches``: one StickyService's subscriptions to them.

Data flows up: objects from the API server become model values (:mod:`..model`).
"""
