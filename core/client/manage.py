"""Account management and contract details (protocol.md#account-management).

Deleting an account and the revoke URL are the user's calls (signed with their access
token, refreshed by the caller's token keeper on a 401); the contract is the application's.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

import msgspec

from ..errors import ValidationError
from ..models import ContractDetails, ContractTerms, RevokeUrl, UserAccessToken
from .tokens import token_claims
from .wire import JSON, Wire

log = logging.getLogger(__name__)

#: The certificate extension that carries the contract itself, as a JSON UTF8String.
CONTRACT_OID = "1.2.826.0.1.6861219.1"


def account_header(account_id: str) -> str:
    """An account id fit for a request header: non-empty, no line breaks or controls."""
    value = account_id.strip() if isinstance(account_id, str) else ""
    if not value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValidationError(
            f"the account id {account_id!r} is not usable: give the id of one of the user's "
            "accounts (`privateshare accounts`)"
        )
    return value


class Management:
    """``DELETE permission-access/service``, ``GET permission-access/revoke`` and
    ``GET permission-access/contract``, over ``wire``."""

    def __init__(self, wire: Wire, redirect_uri: str) -> None:
        self.wire = wire
        self.redirect_uri = redirect_uri

    def delete_account(self, token: UserAccessToken, account_id: str) -> None:
        """Delete one account of the user; its files leave later sessions. Retried (idempotent)."""
        headers = {**JSON, "accountId": account_header(account_id)}
        self.wire.retry.call(
            lambda: self.wire.json(
                "DELETE",
                "permission-access/service/h:accountId",
                token_claims(token),
                headers=headers,
            ),
            "DELETE permission-access/service",
        )

    def revoke_url(
        self, token: UserAccessToken, account_id: str, redirect_uri: str | None = None
    ) -> RevokeUrl:
        """Where the user withdraws one account's permission, then returns to ``redirect_uri``."""
        headers = {
            **JSON,
            "accountId": account_header(account_id),
            "redirectUri": redirect_uri or self.redirect_uri,
        }
        answer = self.wire.retry.call(
            lambda: self.wire.json(
                "GET", "permission-access/revoke/h:accountId", token_claims(token), headers=headers
            ),
            "GET permission-access/revoke",
        )
        try:
            return msgspec.convert(answer, RevokeUrl)
        except msgspec.ValidationError as exc:
            raise ValidationError(
                f"permission-access/revoke: the answer is not {{location: string}}: {exc}"
            ) from None

    def contract(self) -> ContractDetails:
        """The contract of the configured credentials, its terms decoded when it carries them."""
        answer = self.wire.retry.call(
            lambda: self.wire.json("GET", "permission-access/contract", {}),
            "GET permission-access/contract",
        )
        try:
            details = msgspec.convert(answer, ContractDetails)
        except msgspec.ValidationError as exc:
            raise ValidationError(
                f"permission-access/contract: the answer does not have the expected shape: {exc}"
            ) from None
        if details.type.lower() == "x509":
            terms = contract_terms(details.certificate)
            if terms is not None:
                details = msgspec.structs.replace(details, terms=terms)
        return details


def contract_terms(certificate: str) -> ContractTerms | None:
    """The contract inside a base64 DER certificate (its extension :data:`CONTRACT_OID`).

    None when there is none or it does not decode: the details stand without it.
    """
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(certificate, validate=True))
        extension = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(CONTRACT_OID))
    except (ValueError, binascii.Error, x509.ExtensionNotFound) as exc:
        log.debug("the contract certificate carries no readable contract: %s", exc)
        return None
    value = extension.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    try:
        document = msgspec.json.decode(_utf8_string(raw))
    except (ValueError, msgspec.DecodeError) as exc:
        log.debug("the contract in the certificate is not JSON: %s", exc)
        return None
    if not isinstance(document, dict):
        return None
    request = document.get("dataRequest")
    request = request if isinstance(request, dict) else {}
    policy = request.get("consentPolicy")
    policy = policy if isinstance(policy, dict) else {}
    return ContractTerms(
        name=_text(document.get("name")),
        share_type=_text(policy.get("shareType")),
        purpose=_text(request.get("purpose")),
        service_groups=_objects(request.get("serviceGroups")),
        time_ranges=_objects(request.get("timeRanges")),
        document=document,
    )


def _utf8_string(der: bytes) -> bytes:
    """The content of a DER UTF8String (tag 12); other bytes are taken as they are."""
    if len(der) < 2 or der[0] != 0x0C:
        return der
    size, start = der[1], 2
    if size & 0x80:
        count = size & 0x7F
        size, start = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
    if start + size != len(der):
        raise ValueError("a UTF8String of the wrong length")
    return der[start:]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _objects(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
