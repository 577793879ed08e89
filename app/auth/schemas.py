from __future__ import annotations

import msgspec


class OtpRequest(msgspec.Struct):
    mobile: str


class OtpSent(msgspec.Struct):
    mobile: str
    expires_in: int


class OtpVerify(msgspec.Struct):
    mobile: str
    code: str


class TokenIssued(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int
