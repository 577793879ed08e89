"""The group commit's outbox (app.booking.writer._Outbox): committed messages handed to RQ in
as few calls as it can, on a thread of its own."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from app.booking.writer import _Outbox


def test_messages_committed_while_one_send_is_on_its_way_go_out_together() -> None:
    calls: list[list[str]] = []
    sending, gate = threading.Event(), threading.Event()

    def send(ids: Sequence[str]) -> None:
        calls.append(list(ids))
        sending.set()
        gate.wait(5)

    outbox = _Outbox(send)
    try:
        outbox.send(["a"])
        assert sending.wait(5)  # "a" is on its way, held at the gate
        outbox.send(["b"])
        outbox.send(["c", "d"])
        gate.set()
        assert outbox.wait(5)
        assert calls == [["a"], ["b", "c", "d"]]
    finally:
        outbox.close()


def test_a_send_that_fails_is_logged_and_the_next_ones_still_go() -> None:
    calls: list[list[str]] = []

    def send(ids: Sequence[str]) -> None:
        calls.append(list(ids))
        if ids == ["lost"]:
            raise ConnectionError("RQ's Redis is away")  # the sweep re-enqueues committed rows

    outbox = _Outbox(send)
    try:
        outbox.send(["lost"])
        assert outbox.wait(5)
        outbox.send(["next"])
        assert outbox.wait(5)
        assert calls == [["lost"], ["next"]]
        outbox.send([])  # nothing to send: no call
        assert outbox.wait(1) and len(calls) == 2
    finally:
        outbox.close()
