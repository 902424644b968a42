"""``privateshare.callback``: the one-shot server on the redirect URI, over real HTTP."""

from __future__ import annotations

import socket

import pytest
import requests

from privateshare.callback import CallbackServer, CallbackTimeout
from privateshare.errors import ConfigError

from ..helpers import free_port

pytestmark = pytest.mark.slow  # a real HTTP server, if a small one


def test_the_callback_is_received_once_and_the_page_says_how_it_went() -> None:
    port = free_port()
    with CallbackServer(f"http://127.0.0.1:{port}/callback") as server:
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/other", timeout=10).status_code == 404
        answer = requests.get(f"{base}/callback?code=abc&state=s&success=true&empty=", timeout=10)
        assert answer.status_code == 200 and "Consent received" in answer.text
        assert "abc" not in answer.text  # the code is not echoed
        assert server.wait(5) == {"code": "abc", "state": "s", "success": "true", "empty": ""}
        again = requests.get(f"{base}/callback?code=other", timeout=10)
        assert again.status_code == 404  # one callback only
        assert server.wait(5)["code"] == "abc"


def test_a_refusal_gets_a_page_that_says_so() -> None:
    port = free_port()
    with CallbackServer(f"http://localhost:{port}/cb") as server:
        answer = requests.get(f"http://127.0.0.1:{port}/cb?errorCode=USER_CANCEL", timeout=10)
        assert "Consent not given" in answer.text
        assert server.wait(5) == {"errorCode": "USER_CANCEL"}


def test_no_callback_in_time_is_a_timeout_that_says_what_to_do() -> None:
    with (
        CallbackServer(f"http://127.0.0.1:{free_port()}/cb") as server,
        pytest.raises(CallbackTimeout, match=r"within 0s; run the command again"),
    ):
        server.wait(0.01)


@pytest.mark.parametrize(
    "uri", ["https://127.0.0.1:8443/cb", "http://example.com/cb", "http://10.0.0.1:8080/cb"]
)
def test_only_a_local_http_redirect_uri_can_be_served(uri: str) -> None:
    with pytest.raises(ConfigError, match=r"can only receive the callback on an http://127\.0"):
        CallbackServer(uri)


def test_a_port_in_use_is_a_config_error_naming_it() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
            CallbackServer(f"http://127.0.0.1:{port}/cb")
