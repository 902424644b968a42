"""What ``GET permission-access/contract`` says about the sandbox's two contracts.

The answer has the shape the official SDKs validate: ``{accessType, application,
certificate, certificateContractSchemaVersion, expirationDate, id, partnerId,
type}``. As on digi.me, ``type`` is ``"x509"`` and ``certificate`` is a base64 DER
X.509 certificate whose extension :data:`CONTRACT_OID` holds the contract itself
as a JSON string (a UTF8String): its name, the data it asks for (every service
group of the catalogue, no service narrowed: all of the library's data), its time
range, and whether consent is ``ongoing`` or ``oneoff``. The certificate is signed
by the sandbox's own key, deterministically, so answers never change.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .catalogue import CATEGORIES
from .registry import Contract, Registry

#: The certificate extension holding the contract JSON (as the iOS SDK reads it).
CONTRACT_OID = x509.ObjectIdentifier("1.2.826.0.1.6861219.1")
SCHEMA_VERSION = "5.0.0"
ISSUED = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
EXPIRES = dt.datetime(2035, 1, 1, tzinfo=dt.UTC)
#: The one-off contract's data starts here (all of the library's data is later).
ONEOFF_SINCE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def _der_utf8(text: str) -> bytes:
    """DER of an ASN.1 UTF8String."""
    raw = text.encode("utf-8")
    n = len(raw)
    if n < 0x80:
        return bytes([0x0C, n]) + raw
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x0C, 0x80 | len(size)]) + size + raw


def contract_document(registry: Registry, contract: Contract) -> dict[str, Any]:
    """The contract JSON inside the certificate (the iOS SDK's "ContractVersion5")."""
    ongoing = contract.ongoing
    if ongoing:
        time_ranges: list[dict[str, Any]] = [{"type": "all"}]
    else:
        time_ranges = [{"from": int(ONEOFF_SINCE.timestamp())}]
    return {
        "schemaVersion": SCHEMA_VERSION,
        "revision": "1",
        "name": "Sandbox ongoing read" if ongoing else "Sandbox one-off read",
        "color": "#0E73B9",
        "dataRequest": {
            "purpose": "Development and testing against the privateshare sandbox",
            "serviceGroups": [{"id": c.id, "name": c.name} for c in CATEGORIES],
            "timeRanges": time_ranges,
            "consentPolicy": {
                "shareType": contract.kind,
                "description": (
                    "Ongoing access: data is shared until the user withdraws consent"
                    if ongoing
                    else "One-off access: data is shared once"
                ),
            },
            "dataRetention": {"dataRetained": ongoing, "description": "Kept by the app"},
            "dataTransportPolicy": {"leavesDevice": True, "description": "Sent to the app"},
            "externalSharePolicy": {"sharedExternally": False, "description": "Not shared"},
            "gdpr": {"canRequestRightToBeForgotten": True, "description": "Will be honoured"},
        },
        "resources": {
            "homePage": "http://127.0.0.1/",
            "privacyPolicy": "http://127.0.0.1/privacy",
            "termsAndConditions": "http://127.0.0.1/terms",
        },
        "metadata": {
            "oAuth": {
                "deliveryMode": {"type": "redirect", "redirectUri": contract.redirect_uris[0]}
            }
        },
        "contractId": contract.contract_id,
        "appId": registry.application_id,
    }


def certificate(registry: Registry, contract: Contract) -> str:
    """Base64 DER of the contract certificate, signed by the sandbox's key."""
    document = json.dumps(contract_document(registry, contract), separators=(",", ":"))
    key: rsa.RSAPrivateKey = registry.server_key
    serial = int.from_bytes(hashlib.sha256(contract.contract_id.encode()).digest()[:16], "big")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, contract.contract_id),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, registry.application_id),
        ]
    )
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "digi.me sandbox contracts")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(contract.public_key)
        .serial_number(serial >> 1 or 1)
        .not_valid_before(ISSUED)
        .not_valid_after(EXPIRES)
        .add_extension(
            x509.UnrecognizedExtension(CONTRACT_OID, _der_utf8(document)), critical=False
        )
        .sign(key, hashes.SHA256())  # PKCS#1 v1.5: deterministic
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def details(registry: Registry, contract: Contract) -> dict[str, Any]:
    """The ``GET permission-access/contract`` answer for one contract."""
    partner = hashlib.sha256(registry.application_id.encode()).hexdigest()[:12]
    return {
        "accessType": "r",
        "application": {
            "id": registry.application_id,
            "name": "privateshare sandbox application",
            "resources": {"homePage": "http://127.0.0.1/"},
            "status": 1,
        },
        "certificate": certificate(registry, contract),
        "certificateContractSchemaVersion": SCHEMA_VERSION,
        "expirationDate": int(EXPIRES.timestamp() * 1000),
        "id": contract.contract_id,
        "partnerId": f"sandbox-partner-{partner}",
        "type": "x509",
    }
