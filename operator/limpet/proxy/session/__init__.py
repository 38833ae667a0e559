"""The session layer: which backend serves a request (cookies, learned keys, request keys,
passive health, the plan snapshot, session counts). No sockets, no asyncio."""
