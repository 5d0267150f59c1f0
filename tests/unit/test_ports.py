"""The local stack's port picker: outside the kernel's ephemeral range, bindable, never twice."""

from __future__ import annotations

import socket

from cxrmesh.local import ports
from cxrmesh.local.ports import ephemeral_range, free_port


def test_ports_lie_outside_the_range_outgoing_connections_draw_from():
    low, high = ephemeral_range()
    picked = [free_port() for _ in range(300)]
    assert all(not low <= p <= high for p in picked), "a client socket could take such a port first"
    assert len(set(picked)) == len(picked), "the same port was handed out twice"


def test_a_port_already_bound_is_never_handed_out(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        taken = held.getsockname()[1]
        ports._handed_out.discard(("127.0.0.1", taken))  # forget it: only the bind check may save us
        draws = iter([taken, taken])  # the held port twice, then real draws (a neighbour may be busy)
        real = ports._random.randint
        monkeypatch.setattr(ports._random, "randint", lambda a, b: next(draws, None) or real(a, b))
        assert free_port() != taken
