"""The HTTP/1.1 engine: bytes, framing, client and backend connections, the pool.

It knows the session layer only through :mod:`limpet.proxy.engine.port`.
"""
