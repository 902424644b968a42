"""The client package's shape: old import paths deprecated, calls a profile lacks absent."""

from __future__ import annotations

import importlib
import sys

import pytest

from privateshare.client import ClientV15, ClientV17, UnsupportedCall, has, need
from privateshare.config import DigimeConfig
from privateshare.keys import KeyHandle
from privateshare.transport import HttpRequest, HttpResponse


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("privateshare.api", "DigimeClient", ClientV17),
        ("privateshare.api15", "DigimeClientV15", ClientV15),
    ],
)
def test_the_old_modules_warn_and_still_work(old: str, name: str, new: type) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=r"privateshare\.client"):
        module = importlib.import_module(old)
    assert issubclass(getattr(module, name), new)


def _no_send(request: HttpRequest) -> HttpResponse:
    raise AssertionError("no request is made")


def _no_key() -> KeyHandle:
    raise AssertionError("no key is needed")


def test_a_call_the_profile_lacks_is_absent_and_need_says_what_to_do() -> None:
    config = DigimeConfig(application_id="app", contract_id="c", api="v1.5")
    v15 = ClientV15(config, _no_send, _no_key, decrypt=lambda *a: iter(()))
    v17 = ClientV17(config, _no_send, _no_key)
    assert not hasattr(v15, "delete_user") and not has(v15, "delete_user")
    assert has(v17, "delete_user") and need(v17, "delete_user") == v17.delete_user
    with pytest.raises(UnsupportedCall) as info:
        need(v15, "delete_user")
    text = str(info.value)
    assert "DELETE user does not exist in API v1.5" in text
    assert "delete their token from your token store" in text
