"""API errors the sandbox answers with, in digi.me's wire shape (protocol.md#errors).

Handlers raise :class:`ApiError`; the server turns it into the JSON body
``{"error": {"code", "message", "reference"}}`` plus the ``X-Error-*`` headers,
so every bad request gets a documented code and status, never a 500.
"""

from __future__ import annotations

import secrets


class ApiError(Exception):
    """An error response: HTTP status, digi.me error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.reference = secrets.token_hex(12)

    def body(self) -> dict[str, dict[str, str]]:
        """The standard error body."""
        return {"error": {"code": self.code, "message": self.message, "reference": self.reference}}

    def headers(self) -> list[tuple[str, str]]:
        """The ``X-Error-*`` headers Android reads instead of the body."""
        # Header values must stay latin-1 and single-line.
        message = self.message.encode("latin-1", "replace").decode("latin-1").replace("\n", " ")
        return [
            ("X-Error-Code", self.code),
            ("X-Error-Message", message),
            ("X-Error-Reference", self.reference),
        ]


def validation(detail: str = "") -> ApiError:
    """400 ``ValidationErrors``: a malformed request parameter or body."""
    message = "Parameter validation errors"
    return ApiError(400, "ValidationErrors", f"{message}: {detail}" if detail else message)


def bad_bearer() -> ApiError:
    """406 ``ValidationErrors``: missing, malformed or badly signed bearer JWT (N16 mock)."""
    return ApiError(406, "ValidationErrors", "Parameter validation errors")


def nonce_used(nonce: str) -> ApiError:
    """406 ``InvalidRequest``: the nonce was seen before (N16 mock wording)."""
    return ApiError(
        406, "InvalidRequest", f"The nonce provided in JWT payload ({nonce}) has already been used"
    )


def invalid_token(token_type: str, *, expired: bool = False) -> ApiError:
    """401 ``InvalidToken`` for ``access_token`` or ``refresh_token``."""
    state = "expired" if expired else "invalid"
    return ApiError(401, "InvalidToken", f"The token ({token_type}) is {state}")


def invalid_client(client_id: str) -> ApiError:
    """404 ``InvalidClient``: unknown application/contract pair."""
    return ApiError(404, "InvalidClient", f"The client_id ({client_id}) is invalid")


def invalid_redirect_uri(uri: str) -> ApiError:
    """404 ``InvalidRedirectUri``: not on the contract's allow-list."""
    return ApiError(404, "InvalidRedirectUri", f"The redirect_uri ({uri}) is invalid")


def insufficient_scope() -> ApiError:
    """403 ``InsufficientScope``: an ongoing-only operation on a one-off contract."""
    return ApiError(
        403,
        "InsufficientScope",
        "The request requires higher privileges than provided by the access token",
    )


def invalid_grant(message: str) -> ApiError:
    """400 ``InvalidGrant``: unknown, used or expired code, or a PKCE mismatch."""
    return ApiError(400, "InvalidGrant", message)


def not_found(code: str, message: str) -> ApiError:
    """404 with a JSON error body."""
    return ApiError(404, code, message)
