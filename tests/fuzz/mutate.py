"""A small deterministic byte mutator: the engine of the in-suite fuzz run (and of ``make fuzz``
where atheris is not installed).

libFuzzer-style mutations (bit flips, random bytes, "interesting" 16/32-bit values such as 0, -1 and
2^31 over length fields, insertions, deletions, duplicated ranges, splices of two seeds, truncation),
aimed mostly at the first 4 KiB where the file meta header and the data set header live.
"""

from __future__ import annotations

import random
import struct

_INTERESTING = (
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFE,
    0xFFFFFFFF,
)
_TOKENS = (
    b"\xfe\xff\x00\xe0",
    b"\xfe\xff\x0d\xe0",
    b"\xfe\xff\xdd\xe0",
    b"SQ\x00\x00",
    b"OB\x00\x00",
    b"UN\x00\x00",
    b"DICM",
    b"\xff\x4f\xff\x51",
    b"\xff\xd8\xff\xc0",
    b"\xe0\x7f\x10\x00",
)


def _position(rng: random.Random, data: bytearray) -> int:
    if not data:
        return 0
    head = min(len(data), 4096)
    return rng.randrange(head) if rng.random() < 0.8 else rng.randrange(len(data))


def mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    """One to four mutations of `data` (`other` is a second seed for splicing)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = _position(rng, out)
        kind = rng.randrange(9)
        if kind == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif kind == 2:
            value = rng.choice(_INTERESTING)
            fmt = rng.choice(("<L", ">L", "<H", ">H")) if value <= 0xFFFF else rng.choice(("<L", ">L"))
            packed = struct.pack(fmt, value)
            out[at : at + len(packed)] = packed
        elif kind == 3:
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif kind == 4:
            del out[at : at + rng.randint(1, 64)]
        elif kind == 5 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 256)]
        elif kind == 6:
            token = rng.choice(_TOKENS)
            out[at : at + len(token)] = token
        elif kind == 7 and other:
            start = rng.randrange(len(other))
            out[at:] = other[start:]
        elif kind == 8 and out:
            del out[rng.randrange(len(out)) :]
    return bytes(out)
