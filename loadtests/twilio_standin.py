"""A local stand-in for Twilio's Messages REST API, for tests and load tests (there is no network here).

It speaks enough of Twilio's 2010-04-01 API that the real ``twilio`` client sends through it: create,
list and fetch Messages, with Twilio-shaped JSON resources and errors. Nothing is delivered and no
status callbacks are made; messages are only recorded.

In a test::

    with TwilioStandIn() as twilio:
        client = twilio_client(account_sid, auth_token, twilio.base_url)  # app.sms.twilio_client
        ...
        [sent] = twilio.wait_for(1)

For a load test, in its own process::

    python -m loadtests.twilio_standin --port 8099
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import email.utils
import json
import logging
import re
import secrets
import signal
import threading
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
MESSAGES = re.compile(rf"^/{API_VERSION}/Accounts/(?P<account>[^/]+)/Messages\.json$")
MESSAGE = re.compile(rf"^/{API_VERSION}/Accounts/(?P<account>[^/]+)/Messages/(?P<sid>[^/]+)\.json$")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_BODY_LENGTH = 1600

Payload = dict[str, Any]


def twilio_error(status: int, code: int, message: str) -> Payload:
    """The JSON body Twilio answers errors with; the client turns it into a TwilioRestException."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def num_segments(body: str) -> int:
    """How many SMS parts Twilio would bill for ``body``.

    GSM-7 fits 160 characters in one SMS and 153 per part once split; anything else (Persian) goes as
    UCS-2: 70, then 67 per part, counted in UTF-16 code units. ASCII stands in for the GSM alphabet.
    """
    if body.isascii():
        single, part, length = 160, 153, len(body)
    else:
        single, part, length = 70, 67, len(body.encode("utf-16-le")) // 2
    return 1 if length <= single else -(-length // part)


class TwilioStandIn:
    """An HTTP server on 127.0.0.1 that records the messages the twilio client creates.

    ``port=0`` picks a free port. All methods are safe to call from any thread.
    """

    def __init__(self, port: int = 0) -> None:
        # Binding here, not in start(), so base_url is known before the server runs.
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.standin = self
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()
        self._resources: list[Payload] = []  # Twilio-shaped Message resources, oldest first
        self._callbacks: dict[str, str | None] = {}  # sid -> StatusCallback; not part of the resource
        self._failures: collections.deque[int] = collections.deque()  # statuses for the next creates

    # --- control -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TwilioStandIn:
        # A short poll interval, because stop() waits up to one interval (0.5 s by default) per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="twilio-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        # shutdown() waits for serve_forever() to notice, so it would hang if start() was never called.
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> TwilioStandIn:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next ``n`` message creates with ``status`` and a Twilio error; nothing is recorded for them."""
        if not 400 <= status < 600:
            raise ValueError(f"not an error status: {status}")
        with self._changed:
            self._failures.extend([status] * n)

    def clear(self) -> None:
        """Forget recorded messages and pending failures."""
        with self._changed:
            self._resources.clear()
            self._callbacks.clear()
            self._failures.clear()
            self._changed.notify_all()

    @property
    def messages(self) -> list[dict[str, Any]]:
        """A copy of the messages created so far, oldest first."""
        with self._changed:
            return [self._summary(resource) for resource in self._resources]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` messages are recorded and return them; TimeoutError if they don't come."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._resources) >= count, timeout):
                raise TimeoutError(f"expected {count} messages within {timeout}s, got {len(self._resources)}")
            return [self._summary(resource) for resource in self._resources]

    def _summary(self, resource: Payload) -> dict[str, Any]:
        return {
            "sid": resource["sid"],
            "to": resource["to"],
            "from_": resource["from"],
            "body": resource["body"],
            "status_callback": self._callbacks[resource["sid"]],
            "account_sid": resource["account_sid"],
        }

    # --- the API ---------------------------------------------------------------------------------
    # Each returns (HTTP status, JSON payload); the handler only parses and writes HTTP.

    def create_message(self, account: str, form: dict[str, str]) -> tuple[int, Payload]:
        with self._changed:
            if self._failures:
                status = self._failures.popleft()
                if status == 400:  # as Twilio refuses a number it cannot send to, naming it
                    to = form.get("To", "")
                    return status, twilio_error(status, 21211, f"The 'To' number {to} is not a valid phone number.")
                # 20500 for a 500, 20429 for a 429: Twilio's codes for these follow the status.
                return status, twilio_error(status, 20000 + status, f"Stand-in failure: {HTTPStatus(status).phrase}")

        to = form.get("To", "")
        from_ = form.get("From", "")
        service = form.get("MessagingServiceSid", "")
        body = form.get("Body", "")
        if not to:
            return 400, twilio_error(400, 21604, "A 'To' phone number is required.")
        if not from_ and not service:
            return 400, twilio_error(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required.")
        if not body and "MediaUrl" not in form and "ContentSid" not in form:
            return 400, twilio_error(400, 21602, "Message body is required.")
        if len(body) > MAX_BODY_LENGTH:
            return 400, twilio_error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")

        sid = "SM" + secrets.token_hex(16)
        uri = f"/{API_VERSION}/Accounts/{account}/Messages/{sid}.json"
        now = email.utils.format_datetime(datetime.now(UTC))  # RFC 2822, as Twilio: "Mon, 02 Jun 2025 ... +0000"
        resource: Payload = {
            "account_sid": account,
            "api_version": API_VERSION,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_ or None,
            "messaging_service_sid": service or None,
            "num_media": "0",
            "num_segments": str(num_segments(body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            # Through a Messaging Service Twilio first "accepts" the message, then picks a sender.
            "status": "accepted" if service else "queued",
            "subresource_uris": {"media": f"/{API_VERSION}/Accounts/{account}/Messages/{sid}/Media.json"},
            "to": to,
            "uri": uri,
        }
        with self._changed:
            self._resources.append(resource)
            self._callbacks[sid] = form.get("StatusCallback") or None
            self._changed.notify_all()
        return 201, resource

    def list_messages(self, account: str, path: str, query: dict[str, str]) -> tuple[int, Payload]:
        filters = {key: query[key] for key in ("To", "From") if query.get(key)}
        try:
            page_size = min(int(query.get("PageSize", DEFAULT_PAGE_SIZE)), MAX_PAGE_SIZE)
            page = int(query.get("Page", 0))
        except ValueError:
            return 400, twilio_error(400, 20001, "Invalid paging parameters")
        if page_size < 1 or page < 0:
            return 400, twilio_error(400, 20001, "Invalid paging parameters")

        # A message still queued has no DateSent (this stand-in sends none), and Twilio's
        # DateSent filters never match one that has none.
        by_date_sent = any(key.startswith("DateSent") for key in query)
        with self._changed:
            # Twilio lists the newest first.
            matching = [
                resource
                for resource in reversed(self._resources)
                if resource["account_sid"] == account
                and resource["to"] == filters.get("To", resource["to"])
                and resource["from"] == filters.get("From", resource["from"])
                and not (by_date_sent and resource["date_sent"] is None)
            ]
        start = page * page_size
        records = matching[start : start + page_size]

        def page_uri(number: int) -> str:
            return f"{path}?{urlencode({**filters, 'PageSize': page_size, 'Page': number})}"

        # The client follows next_page_uri as it is, so paging needs no token.
        return 200, {
            "messages": records,
            "start": start,
            "end": start + max(len(records) - 1, 0),
            "page": page,
            "page_size": page_size,
            "uri": page_uri(page),
            "first_page_uri": page_uri(0),
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            "next_page_uri": page_uri(page + 1) if start + page_size < len(matching) else None,
        }

    def fetch_message(self, account: str, sid: str, path: str) -> tuple[int, Payload]:
        with self._changed:
            for resource in self._resources:
                if resource["sid"] == sid and resource["account_sid"] == account:
                    return 200, resource
        return 404, twilio_error(404, 20404, f"The requested resource {path} was not found")


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connections under a load test's bursts.
    request_queue_size = 128
    standin: TwilioStandIn


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, as Twilio does: the client's requests session reuses connections.
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        # Read the body even when unused, or it would be taken for the next request on this connection.
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        standin = self.server.standin

        many, one = MESSAGES.match(url.path), MESSAGE.match(url.path)
        match = many or one
        if match is None:
            self._reply(404, twilio_error(404, 20404, f"The requested resource {url.path} was not found"))
            return
        account = match["account"]
        if not self._authenticated(account):
            self._reply(401, twilio_error(401, 20003, "Authenticate"), {"WWW-Authenticate": 'Basic realm="Twilio API"'})
            return

        if many and method == "POST":
            status, payload = standin.create_message(account, _first_values(raw_body.decode("utf-8")))
        elif many and method == "GET":
            status, payload = standin.list_messages(account, url.path, _first_values(url.query))
        elif one and method == "GET":
            status, payload = standin.fetch_message(account, match["sid"], url.path)
        else:
            status, payload = 405, twilio_error(405, 20004, "Method not allowed")
        self._reply(status, payload)

    def _authenticated(self, account: str) -> bool:
        """Basic auth as Twilio takes it: the account SID (or an API key, SK...) and a secret.

        The secret itself is not checked: the stand-in has no accounts.
        """
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            username, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return bool(password) and (username == account or username.startswith("SK"))

    def _reply(self, status: int, payload: Payload, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes every request to stderr, which drowns a load test's output.
        log.debug("%s " + format, self.address_string(), *args)


def _first_values(encoded: str) -> dict[str, str]:
    """A form or query string as a dict, keeping the first value of repeated keys."""
    return {key: values[0] for key, values in parse_qs(encoded, keep_blank_values=True).items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a local stand-in for Twilio's Messages API.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)

    # Stop the same way on SIGTERM (how a load-test harness ends it) as on Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    standin = TwilioStandIn(port=args.port)
    print(f"Twilio stand-in on {standin.base_url} (Ctrl-C to stop)", flush=True)
    try:
        standin.start()
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
        print(f"{len(standin.messages)} messages received", flush=True)


if __name__ == "__main__":
    main()
