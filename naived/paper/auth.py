"""Who may ask: Binance's API key and signature checks, with its error codes.

USER_STREAM endpoints need the API key (`X-MBX-APIKEY` must be `paper.api_key`: -2014 when
absent, -2015 when wrong). SIGNED ones also need `timestamp` (ms, or µs) within `recvWindow`
(ms, up to three decimals, at most 60000; default 5000) and not 1 s ahead (-1021), and the
HMAC-SHA256 `signature` (key `paper.api_secret`) of the query string followed by the body
(-1022).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from decimal import Decimal
from typing import Any

from naived.paper.book import Rejected
from naived.paper.params import Params, mandatory, optional_int, stamp_us

MAX_RECV_WINDOW = 60000
RECV_WINDOW_RE = re.compile(r"^[0-9]{1,5}(\.[0-9]{1,3})?$")


class Auth:
    """The paper account's API key and secret, and the checks that use them."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        self._key = api_key
        self._mac = hmac.new(api_secret.encode(), digestmod=hashlib.sha256)

    def check_key(self, headers: Any) -> None:
        """USER_STREAM and SIGNED endpoints: the API key header."""
        key = headers.get("X-MBX-APIKEY")
        if not key:
            raise Rejected(-2014, "API-key format invalid.", 401)
        if not hmac.compare_digest(key, self._key):
            raise Rejected(-2015, "Invalid API-key, IP, or permissions for action.", 401)

    def check_signed(self, headers: Any, query: str, body: str, params: Params) -> None:
        """Binance's SIGNED checks: API key, timestamp within recvWindow, signature."""
        self.check_key(headers)
        stamp = optional_int(params, "timestamp")
        if stamp is None:
            raise Rejected(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
        # Binance takes the timestamp in ms or µs, and recvWindow in ms with up to 3 decimals (µs).
        request_us = stamp_us(stamp)
        window_text = params.get("recvWindow") or "5000"
        if not RECV_WINDOW_RE.match(window_text):
            raise Rejected(-1100,
                           "Illegal characters found in parameter 'recvWindow'; legal range is '^[0-9]{1,5}(\\.[0-9]{1,3})?$'.")
        window_us = int(Decimal(window_text) * 1000)
        if window_us > MAX_RECV_WINDOW * 1000:
            raise Rejected(-1131, "recvWindow must be less than 60000")
        now_us = time.time_ns() // 1000
        if request_us >= now_us + 1_000_000:
            raise Rejected(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now_us - request_us > window_us:
            raise Rejected(-1021, "Timestamp for this request is outside of the recvWindow.")
        signature = mandatory(params, "signature")
        mac = self._mac.copy()
        mac.update((_without_signature(query) + _without_signature(body)).encode())
        if not hmac.compare_digest(mac.hexdigest(), signature.lower()):
            raise Rejected(-1022, "Signature for this request is not valid.")


def _without_signature(raw: str) -> str:
    return "&".join(part for part in raw.split("&") if not part.startswith("signature="))
