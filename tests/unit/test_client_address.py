"""The address the per-address limits count (app.web.client_address, app.web.limit_key)."""

from __future__ import annotations

import pytest
from litestar.testing import RequestFactory

from app.web import client_address, limit_key


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


def test_every_address_of_an_ipv6_network_counts_as_one() -> None:
    """A phone or a home is given a whole /64: a new address in it on each request had passed
    every per-address limit."""
    first = RequestFactory().get("/", headers={"X-Forwarded-For": "2001:db8:1:2:3:4:5:6"})
    other = RequestFactory().get("/", headers={"X-Forwarded-For": "2001:db8:1:2:ffff::9"})
    neighbour = RequestFactory().get("/", headers={"X-Forwarded-For": "2001:db8:1:3::1"})
    keys = [client_address(r, trust_forwarded_for=True) for r in (first, other, neighbour)]
    assert keys == ["2001:db8:1:2::/64", "2001:db8:1:2::/64", "2001:db8:1:3::/64"]


@pytest.mark.parametrize(
    ("written", "counted"),
    [
        ("5.6.7.8", "5.6.7.8"),  # the common case: itself
        ("5.6.7.8:51234", "5.6.7.8"),  # a balancer that appends the port
        ("[2001:db8:1:2::1]:443", "2001:db8:1:2::/64"),
        ("::ffff:5.6.7.8", "5.6.7.8"),  # IPv4 written as IPv6: the same citizen
        ("fe80::1%eth0", "fe80::/64"),
        ("unknown", "unknown"),  # not an address: counted as it is
        ("not:an:address", "not:an:address"),
        ("a:" * 40, "unknown"),  # longer than any address: one key for all such junk
    ],
)
def test_what_each_written_address_counts_as(written: str, counted: str) -> None:
    assert limit_key(written) == counted
