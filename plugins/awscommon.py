"""What the AWS plugins (``s3`` sink, ``kms`` key store) share: connection options and errors.

Credentials come from secret references in the config or, when those are left
out, from boto3's standard chain (environment, ``~/.aws``, SSO, instance or
task role). Every botocore failure is turned into a privateshare error that
names the config table, what failed and how to fix it; the raw AWS message is
kept only where it carries no request details, and never a secret.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import msgspec

from privateshare.config import Attempts, HttpUrl, Seconds
from privateshare.errors import ConfigError, PrivateShareError
from privateshare.secrets import Secret

__all__ = ["AwsConnection", "AwsSession", "aws_error"]


class AwsConnection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Options every AWS plugin takes; all optional (the standard AWS chain fills the gaps)."""

    #: AWS region, e.g. ``eu-west-1``; default: the standard chain (``AWS_REGION``, ~/.aws).
    region: str | None = None
    #: A non-AWS endpoint (MinIO, LocalStack, moto) or a VPC endpoint; default: AWS's.
    endpoint_url: HttpUrl | None = None
    #: A named profile from ``~/.aws/config``; default: the standard chain.
    profile: str | None = None
    #: Access key id as a secret reference; give it with ``secret_access_key`` or neither.
    access_key_id: Secret | None = None
    #: Secret access key as a secret reference.
    secret_access_key: Secret | None = None
    #: Session token of temporary credentials, as a secret reference.
    session_token: Secret | None = None
    #: Seconds to wait for a connection and for each response.
    timeout: Seconds = 60.0
    #: Attempts per request (botocore's standard retry mode) on throttling and 5xx.
    max_attempts: Attempts = 5

    def __post_init__(self) -> None:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "access_key_id and secret_access_key: only one is given; give both (as secret "
                "references) or neither to use the standard AWS credential chain"
            )


def _credential_source(options: AwsConnection) -> str:
    if options.access_key_id is not None:
        return f"the access key from {options.access_key_id.describe()}"
    if options.profile:
        return f"profile {options.profile!r}"
    return "the standard AWS credential chain (AWS_ACCESS_KEY_ID, ~/.aws, instance role)"


_loader_lock = threading.Lock()
_loader: Any = None


def _shared_loader() -> Any:
    """One botocore data loader per process: the service models (megabytes of JSON) load once."""
    global _loader
    with _loader_lock:
        if _loader is None:
            import botocore.loaders

            _loader = botocore.loaders.create_loader()
        return _loader


class AwsSession:
    """Makes boto3 clients for one plugin, lazily, once per service; clients are thread-safe."""

    def __init__(
        self,
        options: AwsConnection,
        where: str,
        error: type[PrivateShareError],
        pool_size: int = 32,
    ) -> None:
        self.options = options
        self.where = where
        self.error = error
        self.pool_size = pool_size
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def credential_source(self) -> str:
        return _credential_source(self.options)

    def client(self, service: str) -> Any:
        """The boto3 client for ``service`` (created on first use)."""
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                client = self._clients[service] = self._make(service)
            return client

    def _make(self, service: str) -> Any:
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
            import botocore.session
        except ImportError:
            raise self.error(
                f"[{self.where}] needs boto3: pip install 'privateshare[s3,kms]'"
            ) from None
        o = self.options
        kwargs: dict[str, Any] = {}
        if o.access_key_id is not None and o.secret_access_key is not None:
            try:
                kwargs["aws_access_key_id"] = o.access_key_id.reveal()
                kwargs["aws_secret_access_key"] = o.secret_access_key.reveal()
                if o.session_token is not None:
                    kwargs["aws_session_token"] = o.session_token.reveal()
            except ConfigError as exc:
                raise self.error(f"[{self.where}] cannot read the AWS credentials: {exc}") from None
        config = botocore.config.Config(
            connect_timeout=o.timeout,
            read_timeout=o.timeout,
            # total_max_attempts counts the first try; botocore's max_attempts counts retries.
            retries={"mode": "standard", "total_max_attempts": o.max_attempts},
            max_pool_connections=self.pool_size,
        )
        try:
            core = botocore.session.get_session()
            core.register_component("data_loader", _shared_loader())
            session = boto3.session.Session(
                botocore_session=core, profile_name=o.profile, region_name=o.region
            )
            return session.client(service, endpoint_url=o.endpoint_url, config=config, **kwargs)
        except botocore.exceptions.ProfileNotFound:
            raise self.error(
                f"[{self.where}] profile {o.profile!r} is not in ~/.aws/config; "
                "fix the profile option or create the profile"
            ) from None
        except botocore.exceptions.NoRegionError:
            raise self.error(
                f'[{self.where}] has no AWS region; set region = "..." there or AWS_REGION'
            ) from None
        except ValueError as exc:  # e.g. a malformed endpoint_url
            raise self.error(f"[{self.where}] cannot make an AWS {service} client: {exc}") from None


_CREDENTIAL_CODES = {
    "InvalidAccessKeyId": "the access key id is not known to AWS",
    "UnrecognizedClientException": "the access key id is not known to AWS",
    "InvalidClientTokenId": "the access key id is not known to AWS",
    "SignatureDoesNotMatch": "the secret access key does not match the access key id",
    "IncompleteSignature": "the request signature is incomplete (bad credentials)",
    "InvalidSignatureException": "the secret access key does not match the access key id",
    "ExpiredToken": "the session credentials have expired",
    "ExpiredTokenException": "the session credentials have expired",
    "TokenRefreshRequired": "the session credentials have expired",
    "RequestExpired": "the request expired (check the machine's clock)",
}
_XML_CODE = re.compile(r"<Code>(?P<code>[A-Za-z0-9.]+)</Code>")
_DENIED_CODES = {"AccessDenied", "AccessDeniedException", "403", "Forbidden"}


def aws_error(
    exc: BaseException,
    session: AwsSession,
    action: str,
    *,
    permission: str = "",
    not_found: str = "",
    codes: dict[str, str] | None = None,
) -> PrivateShareError:
    """A privateshare error for a failed AWS call: what, where, and how to fix it.

    ``action`` says what was being done ("upload s3://b/k"); ``permission`` the
    IAM action it needs; ``not_found`` what a 404 means here; ``codes`` extra
    service-specific explanations by error code.
    """
    import botocore.exceptions as bx

    where = f"[{session.where}]"
    head = f"{where}: cannot {action}"
    creds = session.credential_source
    if isinstance(exc, PrivateShareError):
        return exc
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return session.error(
            f"{head}: no AWS credentials were found; set access_key_id and secret_access_key "
            f'(secret references such as {{ env = "AWS_ACCESS_KEY_ID" }}) in {where}, or '
            "provide them through the standard AWS chain (environment, ~/.aws, instance role)"
        )
    if isinstance(exc, bx.NoRegionError):
        return session.error(f'{head}: no AWS region; set region = "..." in {where} or AWS_REGION')
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError):
        endpoint = session.options.endpoint_url or "the AWS endpoint"
        return session.error(
            f"{head}: {endpoint} cannot be reached ({type(exc).__name__}); check the network, "
            f"the region and endpoint_url in {where}"
        )
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "unknown"
        inner = _XML_CODE.search(str(error.get("Message", "")))
        if code.isdigit() and inner:
            # Some endpoints (moto, gateways) answer JSON APIs with an XML error document.
            code, error = inner["code"], {"Code": inner["code"], "Message": ""}
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _CREDENTIAL_CODES:
            return session.error(
                f"{head}: {_CREDENTIAL_CODES[code]} ({code}); the credentials come from "
                f"{creds}: fix them, or the access_key_id / secret_access_key references in "
                f"{where}"
            )
        if codes and code in codes:
            return session.error(f"{head}: {codes[code]} ({code})")
        if code in _DENIED_CODES:
            need = f" {permission}" if permission else ""
            return session.error(
                f"{head}: access denied ({code}); the identity behind {creds} needs the IAM "
                f"permission{need} on this resource (see the policy in the docs)"
            )
        if not_found and (code in ("404", "NotFound", "NoSuchKey") or status == 404):
            return session.error(f"{head}: {not_found} ({code})")
        message = str(error.get("Message", ""))[:200]
        detail = f": {message}" if message else ""
        return session.error(f"{head}: AWS answered {code} (HTTP {status}){detail}")
    if isinstance(exc, bx.BotoCoreError):
        return session.error(f"{head}: {type(exc).__name__}: {str(exc)[:200]}")
    return session.error(f"{head}: {type(exc).__name__}")
