"""The engine's sans-I/O HTTP/1.1 core: state machines that take bytes and return what to
send, with no socket, transport, timer or event loop (``asyncio`` is not imported here:
an import-linter contract keeps it so).

Data flow: the asyncio shell (``upstream.py``, ``client.py``/``exchange.py``) reads bytes
from a socket, feeds them to a machine, then does what the machine returned: writes its
``out`` list, pools or closes a connection, starts a tunnel. The machines keep all
HTTP/1.1 message state (framing, head-of-HEAD handling, trailers, 1xx, the upgrade) and
their transitions in one place each: ``request`` (the client's bytes), ``response`` (the
backend's) and ``connection`` (where a client connection's exchange stands, one state
and one transition table); ``actions`` holds every decision the shell carries out, as
action values (route, bind or dial, pool or close, next request or close, the upgrade,
and what to do on a failure).
"""
