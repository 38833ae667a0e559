"""Effects: what the operator does to the world once it has planned.

- ``proxies``: the managed proxies' Deployment and Service and the key Secret
  (server-side apply), and the proxies' admin URLs.
- ``pusher``: the plan to every proxy's admin API, with retries; the proxies' stats back.
- ``reporter``: the StickyService's status subresource and its Events.
"""
