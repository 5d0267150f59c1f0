"""Limits that a service's settings and the code they configure must agree on, stated once.

The settings refuse a value at start-up by the same bound the domain code enforces when it is used,
without the settings (runtime, services) importing the domain package that enforces it.
"""

from __future__ import annotations

from typing import Final

# The de-identification secret (HMAC-SHA256 key of every pseudonym): at least 128 bits.
MIN_SECRET_BYTES: Final[int] = 16
