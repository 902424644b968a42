"""What the flow needs from a protocol client, whatever the API profile.

:class:`Client` is the one interface :class:`~privateshare.flow.Flow` depends on; each
profile (:mod:`.v17`, :mod:`.v15`) implements it from the shared parts of this package.
A call that a profile lacks is not a method of that client: :func:`need` finds it or
raises :class:`UnsupportedCall` with what to do instead, so callers never see an
``AttributeError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from ..config import DigimeConfig
from ..errors import ConfigError, DigimeError, ValidationError
from ..models import (
    Account,
    FileEntry,
    FileList,
    FileMetadata,
    LibraryStatus,
    Session,
    UserAccessToken,
)
from ..transport import HttpResponse


@dataclass(frozen=True)
class AuthorizeStart:
    """What the user needs to consent, and what we keep to finish afterwards.

    ``url`` is what a browser opens. ``app_url`` is the API v1.5 ``digime://``
    deep link for the digi.me app (None in v1.7). ``exchange`` is False when the
    callback brings no code to exchange (v1.5 one-off consent: the session key is
    the only credential).
    """

    url: str
    state: str
    code_verifier: str
    session: Session
    app_url: str | None = None
    redirect_uri: str | None = None
    exchange: bool = True

    def __repr__(self) -> str:
        return f"AuthorizeStart(url=<consent url>, state={self.state[:4]}…, session={self.session})"


@dataclass(frozen=True)
class FileDownload:
    """An open file download: the metadata, and the response to stream the body from."""

    name: str
    metadata: FileMetadata
    last_modified: str | None
    response: HttpResponse


class ConsentDenied(DigimeError):
    """The user cancelled, or the consent page reported an error (protocol.md#consent)."""

    def __init__(self, error_code: str) -> None:
        self.error_code = error_code
        super().__init__(f"consent was not given (errorCode {error_code})")


class UnsupportedCall(ConfigError):
    """The configured API profile has no such call (``[digime] api``)."""

    def __init__(self, call: str, hint: str, api: str = "v1.5") -> None:
        super().__init__(f'{call} does not exist in API {api} ([digime] api = "{api}"); {hint}')


class Missing(NamedTuple):
    """A call a profile lacks: its wire name, and what to do instead."""

    call: str
    hint: str


def check_state(params: Mapping[str, str], state: str) -> None:
    """The callback's ``state`` must be the one we sent: anything else may be forged."""
    if params.get("state") != state:
        raise ValidationError(
            "the consent callback's state does not match the one we sent; "
            "ignore this callback and start the consent again"
        )


def callback_code(params: Mapping[str, str], start: AuthorizeStart) -> str | None:
    """The code of a consent callback whose state and outcome were checked: None when the
    consent brings none to exchange (``start.exchange`` is False)."""
    if not start.exchange:
        return None
    code = params.get("code")
    if not code:
        raise ValidationError("the consent callback has no code")
    return code


@runtime_checkable
class Client(Protocol):
    """The calls every profile has: consent, tokens, a data session, its files, accounts.

    Optional calls (``reauthorize``, ``onboard``, ``delete_user``, ``file_metadata``,
    ``sample_datasets``, discovery and account management) are reached through
    :func:`need`; ``missing`` names those the profile lacks.
    """

    #: The protocol profile (``[digime] api``).
    api: str
    config: DigimeConfig
    base_url: str
    #: Method name -> why the profile lacks it.
    missing: ClassVar[Mapping[str, Missing]]

    def consent_url(
        self,
        *,
        once: bool = False,
        redirect_uri: str | None = None,
        session_options: Mapping[str, Any] | None = None,
        service_id: int | None = None,
    ) -> AuthorizeStart: ...

    def authorize(
        self,
        *,
        redirect_uri: str | None = None,
        state: str | None = None,
        access_token: UserAccessToken | None = None,
        session_options: Mapping[str, Any] | None = None,
        service_id: int | None = None,
        locale: str | None = None,
    ) -> AuthorizeStart: ...

    def parse_callback(self, params: Mapping[str, str], start: AuthorizeStart) -> str | None: ...

    def exchange_code(
        self,
        code: str,
        code_verifier: str,
        *,
        redirect_uri: str | None = None,
        on_answer: Callable[[str], None] | None = None,
    ) -> UserAccessToken: ...

    def refresh(
        self, token: UserAccessToken, *, on_answer: Callable[[str], None] | None = None
    ) -> UserAccessToken: ...

    def token_from_answer(self, answer: str, *, deferred: bool = False) -> UserAccessToken: ...

    def trigger(
        self, token: UserAccessToken, session_options: Mapping[str, Any] | None = None
    ) -> Session: ...

    def file_list(self, session_key: str, token: UserAccessToken | None) -> FileList: ...

    def scan_file_list(
        self,
        session_key: str,
        token: UserAccessToken | None,
        visitor: Callable[[], Callable[[list[FileEntry]], None]],
    ) -> tuple[LibraryStatus, bool]: ...

    def open_file(
        self, session_key: str, name: str, token: UserAccessToken | None
    ) -> FileDownload: ...

    def accounts(self, token: UserAccessToken) -> list[Account]: ...


def need(client: Client, call: str) -> Callable[..., Any]:
    """``client``'s method ``call``, or :class:`UnsupportedCall` saying what to do instead."""
    missing = client.missing.get(call)
    if missing is not None:
        raise UnsupportedCall(missing.call, missing.hint, client.api)
    method = getattr(client, call, None)
    if not callable(method):
        raise UnsupportedCall(call, "this client does not implement it", client.api)
    return method  # type: ignore[no-any-return]


def has(client: Client, call: str) -> bool:
    """Whether ``client``'s profile has the call ``call``."""
    return call not in client.missing and callable(getattr(client, call, None))
