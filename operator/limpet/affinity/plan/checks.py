"""Field checks shared by the plan model: each raises :class:`PlanError` naming the field.

Pure helpers; the model's ``__post_init__`` methods call them, so a plan object can only
exist in a valid state, whether it was built in Python or parsed from JSON.
"""

from __future__ import annotations

import ipaddress
import math
import re

from ..errors import PlanError

TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""RFC 9110 token: header names and cookie names."""

BACKEND_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,62}")
KEY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
HOSTNAME_RE = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)
COOKIE_PATH_RE = re.compile(r"/[\x21-\x3a\x3c-\x7e]*")
"""A cookie Path: starts with '/', printable ASCII without ';' or spaces."""
FILE_PATH_RE = re.compile(r"/[A-Za-z0-9._/-]{0,1023}")
"""An absolute file path inside the proxy (mounted Secrets)."""
KEY_PREFIX_RE = re.compile(r"[\x21-\x7e]{0,128}")
"""A store key prefix: printable ASCII without spaces."""
QUERY_NAME_RE = re.compile(r"[A-Za-z0-9._~!$'()*+,;:@/?%-]{1,256}")


def shown(value: object, limit: int = 40) -> str:
    """``value`` for an error message, cut short: JSON numbers may have thousands of digits."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"  # str() refuses very long ones
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def number(field: str, value: object, *, minimum: float = 0.0, maximum: float = math.inf) -> float:
    """A finite real number (int or float, not bool) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PlanError(f"{field}: must be a number, got {type(value).__name__}")
    try:
        result = float(value)
    except OverflowError:  # an int beyond a double's range (JSON allows any length)
        result = math.inf
    if not math.isfinite(result) or not minimum <= result <= maximum:
        raise PlanError(
            f"{field}: must be a finite number in [{minimum}, {maximum}], got {shown(value)}"
        )
    return result


def optional_number(
    field: str, value: object, *, minimum: float = 0.0, maximum: float = math.inf
) -> float | None:
    """``None``, or :func:`number`."""
    return None if value is None else number(field, value, minimum=minimum, maximum=maximum)


def integer(field: str, value: object, *, minimum: int, maximum: int) -> int:
    """An int (not bool) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{field}: must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise PlanError(f"{field}: must be an integer in {minimum}..{maximum}, got {shown(value)}")
    return value


def boolean(field: str, value: object) -> bool:
    """A bool."""
    if not isinstance(value, bool):
        raise PlanError(f"{field}: must be a boolean, got {type(value).__name__}")
    return value


def matching(field: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    """A str that fully matches ``pattern`` (``what`` describes it in the error)."""
    if not isinstance(value, str):
        raise PlanError(f"{field}: must be a string, got {type(value).__name__}")
    if pattern.fullmatch(value) is None:
        raise PlanError(f"{field}: must be {what}, got {shown(repr(value))}")
    return value


def host(field: str, value: object, what: str) -> str:
    """An IP address literal, or a DNS name whose last label is not numeric: the resolver
    reads ``12345``, ``127.1`` or ``0x7f.1`` as IPv4 addresses (inet_aton's shorthand),
    and RFC 1123 rules such names out, so a name can never dial an address in disguise."""
    if not isinstance(value, str):
        raise PlanError(f"{field}: must be a string, got {type(value).__name__}")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        matching(field, value, HOSTNAME_RE, what)
        last = value.rstrip(".").rpartition(".")[2].lower()
        if last.isdigit() or last.startswith("0x"):
            raise PlanError(f"{field}: must be {what}, got {shown(repr(value))}") from None
    return value
