"""The address the per-address limits count (app.web.client_address)."""

from __future__ import annotations

from litestar.testing import RequestFactory

from app.web import client_address


def test_behind_the_balancer_the_address_it_appended_counts_not_what_the_client_wrote() -> None:
    request = RequestFactory().get("/", headers={"X-Forwarded-For": "10.0.0.7, 5.6.7.8"})
    assert client_address(request, trust_forwarded_for=True) == "5.6.7.8"
    alone = RequestFactory().get("/", headers={"X-Forwarded-For": "5.6.7.8"})
    assert client_address(alone, trust_forwarded_for=True) == "5.6.7.8"


def test_of_several_header_lines_the_last_counts() -> None:
    """A balancer may add a line of its own (HAProxy's option forwardfor), after the client's."""
    request = RequestFactory().get("/", headers={"X-Forwarded-For": "10.0.0.7"})
    request.scope["headers"] = [*request.scope["headers"], (b"x-forwarded-for", b"5.6.7.8")]
    assert client_address(request, trust_forwarded_for=True) == "5.6.7.8"


def test_the_header_is_ignored_unless_the_balancer_is_trusted() -> None:
    request = RequestFactory().get("/", headers={"X-Forwarded-For": "10.0.0.7"})
    assert request.client is not None
    assert client_address(request, trust_forwarded_for=False) == request.client.host != "10.0.0.7"
