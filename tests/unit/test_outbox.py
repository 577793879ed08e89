"""The messenger's outbox (app.sms.service.Outbox): committed messages handed to RQ in as few
calls as it can, on a thread of its own."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from app.sms.service import Outbox


def test_messages_committed_while_one_send_is_on_its_way_go_out_together() -> None:
    calls: list[list[str]] = []
    sending, gate = threading.Event(), threading.Event()

    def send(ids: Sequence[str]) -> None:
        calls.append(list(ids))
        sending.set()
        gate.wait(5)

    outbox = Outbox(send, name="test")
    try:
        outbox.put(["a"])
        assert sending.wait(5)  # "a" is on its way, held at the gate
        outbox.put(["b"])
        outbox.put(["c", "d"])
        assert outbox.unsent == 3 + 1
        gate.set()
        assert outbox.wait(5)
        assert calls == [["a"], ["b", "c", "d"]] and outbox.unsent == 0
    finally:
        outbox.close()


def test_a_send_that_fails_is_logged_and_the_next_ones_still_go() -> None:
    calls: list[list[str]] = []

    def send(ids: Sequence[str]) -> None:
        calls.append(list(ids))
        if ids == ["lost"]:
            raise ConnectionError("RQ's Redis is away")  # the sweep re-enqueues committed rows

    outbox = Outbox(send, name="test")
    try:
        outbox.put(["lost"])
        assert outbox.wait(5)
        outbox.put(["next"])
        assert outbox.wait(5)
        assert calls == [["lost"], ["next"]]
        outbox.put([])  # nothing to send: no call
        assert outbox.wait(1) and len(calls) == 2
    finally:
        outbox.close()


def test_closing_sends_what_was_put_in_first() -> None:
    calls: list[list[str]] = []
    outbox = Outbox(calls.append, name="test")
    outbox.put(["a"])
    outbox.put(["b"])
    outbox.close()
    assert [sent for call in calls for sent in call] == ["a", "b"]


def test_what_is_put_in_after_closing_is_sent_by_the_caller() -> None:
    """A batch still committing as the instance stops: not left behind the thread's end."""
    calls: list[tuple[list[str], str]] = []
    outbox = Outbox(lambda ids: calls.append((list(ids), threading.current_thread().name)), name="test-outbox")
    outbox.put(["a"])
    outbox.close(timeout=30)
    outbox.put(["late"])
    assert calls == [(["a"], "test-outbox"), (["late"], threading.current_thread().name)]
    assert outbox.wait(1) and outbox.unsent == 0


def test_a_thread_that_cannot_start_is_tried_again_at_the_next_put(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    outbox = Outbox(calls.append, name="test-unstartable")
    start = threading.Thread.start

    def cannot(self: threading.Thread) -> None:
        if self.name != "test-unstartable":  # any other thread of the process starts
            return start(self)
        monkeypatch.setattr(threading.Thread, "start", start)  # once
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", cannot)
    try:
        with pytest.raises(RuntimeError):
            outbox.put(["lost"])  # its caller logs it; the sweep sends it
        assert outbox.unsent == 0
        outbox.put(["next"])
        assert outbox.wait(5)
        assert calls == [["next"]]
    finally:
        outbox.close()
