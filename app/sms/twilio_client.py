"""Build the real Twilio client, optionally pointed at another host (a local stand-in for tests and load tests)."""

from __future__ import annotations

from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client


def twilio_client(account_sid: str, auth_token: str, base_url: str, *, timeout: float = 10.0) -> Client:
    """Return a twilio ``Client``; its REST API calls go to ``base_url``, or to Twilio when it is empty.

    Only the ``api`` domain (``https://api.twilio.com``, where Messages live) is redirected; other
    Twilio products (Verify, Messaging services, ...) still go to Twilio.

    ``timeout`` (seconds) bounds each request: the package's default is to wait forever.
    """
    client = Client(account_sid, auth_token, http_client=TwilioHttpClient(timeout=timeout))
    if base_url:
        # Every API call is built as ``client.api.base_url`` + a relative URI (twilio.base.domain.Domain),
        # and so are the next-page links of list calls.
        client.api.base_url = base_url.rstrip("/")
        # With an edge or region set (also through TWILIO_EDGE / TWILIO_REGION in the environment) the
        # client rewrites the host to e.g. api.sydney.au1.twilio.com, which would mangle "127.0.0.1:8099".
        client.edge = None
        client.region = None
    return client
