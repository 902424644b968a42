"""plugins/awscommon.py: botocore failures as privateshare errors, and the clients' options.

No AWS server here: the errors are botocore's own exception objects as botocore raises
them, and clients are made (which needs no network) to read back the options they got.
What a real server answers is in test_sink_s3.py and test_keys_kms.py.
"""

from __future__ import annotations

from pathlib import Path

import botocore.exceptions as bx
import pytest

from privateshare.errors import KeyStoreError, SinkError
from privateshare.plugins.awscommon import AwsConnection, AwsSession, _shared_loader, aws_error
from privateshare.secrets import Secret


@pytest.fixture(autouse=True)
def no_aws_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No region, profile or credentials from this machine's environment or ~/.aws."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))


def session(**options: object) -> AwsSession:
    return AwsSession(AwsConnection(**options), "sinks.archive", SinkError)


def client_error(code: str, message: str = "", status: int = 400) -> bx.ClientError:
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return bx.ClientError(response, "PutObject")


HEAD = "[sinks.archive]: cannot upload s3://b/k"


def translate(exc: BaseException, s: AwsSession | None = None, **kwargs: object) -> str:
    error = aws_error(exc, s or session(), "upload s3://b/k", **kwargs)
    assert type(error) is SinkError, "the plugin's own error class"
    message = str(error)
    assert message.startswith(HEAD), message
    return message


def test_our_own_errors_pass_through_unchanged() -> None:
    ours = KeyStoreError("already explained")
    assert aws_error(ours, session(), "upload") is ours


@pytest.mark.parametrize(
    "exc",
    [bx.NoCredentialsError(), bx.PartialCredentialsError(provider="env", cred_var="secret")],
    ids=["none", "partial"],
)
def test_missing_credentials_say_where_to_give_them(exc: Exception) -> None:
    message = translate(exc)
    assert "no AWS credentials were found" in message
    assert 'set access_key_id and secret_access_key (secret references such as { env = "' in message
    assert "in [sinks.archive]" in message and "standard AWS chain" in message


def test_no_region_says_where_to_set_it() -> None:
    assert translate(bx.NoRegionError()) == (
        f'{HEAD}: no AWS region; set region = "..." in [sinks.archive] or AWS_REGION'
    )


def test_a_timeout_names_the_endpoint_it_could_not_reach() -> None:
    default = translate(bx.ReadTimeoutError(endpoint_url="https://s3.amazonaws.com/b/k"))
    assert default == (
        f"{HEAD}: the AWS endpoint cannot be reached (ReadTimeoutError); check the network, "
        "the region and endpoint_url in [sinks.archive]"
    )
    minio = session(endpoint_url="http://minio.test:9000")
    timeout = bx.ConnectTimeoutError(endpoint_url="http://minio.test:9000")
    assert "http://minio.test:9000 cannot be reached (ConnectTimeoutError)" in translate(
        timeout, minio
    )


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        ("InvalidAccessKeyId", "the access key id is not known to AWS"),
        ("UnrecognizedClientException", "the access key id is not known to AWS"),
        ("SignatureDoesNotMatch", "the secret access key does not match the access key id"),
        ("ExpiredToken", "the session credentials have expired"),
        ("RequestExpired", "the request expired (check the machine's clock)"),
    ],
    ids=lambda value: value.split()[0],
)
def test_credential_codes_are_explained(code: str, meaning: str) -> None:
    assert translate(client_error(code, "raw AWS text", 403)).startswith(
        f"{HEAD}: {meaning} ({code}); the credentials come from "
    )


@pytest.mark.parametrize(
    ("options", "source"),
    [
        ({}, "the standard AWS credential chain (AWS_ACCESS_KEY_ID, ~/.aws, instance role)"),
        ({"profile": "archive"}, "profile 'archive'"),
        (
            {
                "profile": "archive",
                "access_key_id": Secret(env="S3_KEY_ID"),
                "secret_access_key": Secret(env="S3_SECRET"),
            },
            "the access key from environment variable S3_KEY_ID",
        ),
    ],
    ids=["chain", "profile", "references-win"],
)
def test_a_credential_error_names_where_the_credentials_came_from(
    options: dict[str, object], source: str
) -> None:
    s = session(**options)
    assert s.credential_source == source
    assert f"the credentials come from {source}: fix them" in translate(
        client_error("InvalidClientTokenId"), s
    )


def test_json_apis_answered_with_an_xml_error_use_the_inner_code() -> None:
    xml = "<ErrorResponse><Error><Code>AccessDeniedException</Code></Error></ErrorResponse>"
    message = translate(client_error("400", xml), permission="kms:Decrypt")
    assert "access denied (AccessDeniedException)" in message
    assert "<Code>" not in message
    signature = translate(client_error("403", "<Code>InvalidSignatureException</Code>"))
    assert "the secret access key does not match the access key id" in signature


@pytest.mark.parametrize("code", ["AccessDenied", "AccessDeniedException", "403", "Forbidden"])
def test_access_denied_names_the_permission_needed(code: str) -> None:
    message = translate(client_error(code, status=403), permission="s3:PutObject")
    assert message == (
        f"{HEAD}: access denied ({code}); the identity behind the standard AWS credential chain "
        "(AWS_ACCESS_KEY_ID, ~/.aws, instance role) needs the IAM permission s3:PutObject on "
        "this resource (see the policy in the docs)"
    )
    assert "needs the IAM permission on this resource" in translate(client_error(code))


def test_service_codes_are_explained_before_the_general_ones() -> None:
    codes = {"NoSuchBucket": "bucket 'b' does not exist", "AccessDenied": "bucket policy"}
    assert translate(client_error("NoSuchBucket", status=404), codes=codes) == (
        f"{HEAD}: bucket 'b' does not exist (NoSuchBucket)"
    )
    assert translate(client_error("AccessDenied"), codes=codes) == (
        f"{HEAD}: bucket policy (AccessDenied)"
    )
    # Credentials come first: a bad key is not the bucket's fault.
    assert "not known to AWS" in translate(client_error("InvalidAccessKeyId"), codes=codes)


@pytest.mark.parametrize(
    ("code", "status"),
    [("404", 404), ("NotFound", 404), ("NoSuchKey", 404), ("SomethingMissing", 404)],
    ids=["404", "NotFound", "NoSuchKey", "by-status"],
)
def test_not_found_says_what_it_means_here(code: str, status: int) -> None:
    exc = client_error(code, status=status)
    assert translate(exc, not_found="the blob does not exist") == (
        f"{HEAD}: the blob does not exist ({code})"
    )
    assert "AWS answered" in translate(exc), "without a meaning: the general message"


def test_other_answers_keep_code_status_and_a_bounded_message() -> None:
    assert translate(client_error("SlowDown", "Reduce your request rate.", 503)) == (
        f"{HEAD}: AWS answered SlowDown (HTTP 503): Reduce your request rate."
    )
    long = translate(client_error("InternalError", "x" * 1000, 500))
    assert long == f"{HEAD}: AWS answered InternalError (HTTP 500): {'x' * 200}"
    empty = bx.ClientError({}, "PutObject")
    assert translate(empty) == f"{HEAD}: AWS answered unknown (HTTP 0)"


def test_other_failures_say_their_kind_and_nothing_unbounded() -> None:
    botocore = translate(bx.ParamValidationError(report="Invalid bucket name " + "y" * 500))
    assert botocore.startswith(f"{HEAD}: ParamValidationError: Parameter validation failed:")
    assert len(botocore) == len(f"{HEAD}: ParamValidationError: ") + 200
    # Anything else may carry request details in its text: only its type is named.
    other = translate(RuntimeError("Authorization: AWS4-HMAC-SHA256 Credential=AKIA..."))
    assert other == f"{HEAD}: RuntimeError"


def test_a_client_gets_the_options_and_is_made_once_per_service() -> None:
    s = session(
        region="eu-west-1",
        endpoint_url="http://minio.test:9000",
        timeout=7.5,
        max_attempts=2,
    )
    s3 = s.client("s3")
    assert s.client("s3") is s3
    assert s.client("kms") is not s3
    assert (s3.meta.region_name, s3.meta.endpoint_url) == ("eu-west-1", "http://minio.test:9000")
    config = s3.meta.config
    assert (config.connect_timeout, config.read_timeout) == (7.5, 7.5)
    assert config.retries == {"mode": "standard", "total_max_attempts": 2}, "2 tries, not 3"
    assert config.max_pool_connections == 32
    kms = AwsSession(AwsConnection(region="eu-west-1"), "keys", KeyStoreError, pool_size=4)
    assert kms.client("kms").meta.config.max_pool_connections == 4
    assert _shared_loader() is _shared_loader(), "service models load once per process"


def test_credentials_are_read_from_their_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_KEY_ID", "AKIAEXAMPLEKEY000000")
    monkeypatch.setenv("S3_SECRET", "example-secret-value-0000")
    s = session(
        region="eu-west-1",
        access_key_id=Secret(env="S3_KEY_ID"),
        secret_access_key=Secret(env="S3_SECRET"),
        session_token=Secret(env="S3_TOKEN"),
    )
    with pytest.raises(SinkError) as caught:
        s.client("s3")
    message = str(caught.value)
    assert message.startswith("[sinks.archive] cannot read the AWS credentials: ")
    assert "S3_TOKEN" in message
    assert "example-secret-value-0000" not in message and "AKIAEXAMPLEKEY" not in message
    monkeypatch.setenv("S3_TOKEN", "example-token")
    credentials = s.client("s3")._request_signer._credentials
    assert (credentials.access_key, credentials.secret_key, credentials.token) == (
        "AKIAEXAMPLEKEY000000",
        "example-secret-value-0000",
        "example-token",
    )


def test_a_client_that_cannot_be_made_says_why() -> None:
    with pytest.raises(SinkError) as caught:
        session(region="eu-west-1", profile="nowhere").client("s3")
    assert str(caught.value) == (
        "[sinks.archive] profile 'nowhere' is not in ~/.aws/config; "
        "fix the profile option or create the profile"
    )
    with pytest.raises(SinkError, match=r'^\[sinks\.archive\] has no AWS region; set region = "'):
        session().client("kms")
    with pytest.raises(SinkError, match=r"^\[sinks\.archive\] cannot make an AWS s3 client: "):
        session(region="eu-west-1", endpoint_url="not a url").client("s3")


def test_a_secret_key_alone_is_refused() -> None:
    with pytest.raises(ValueError, match="only one is given; give both"):
        AwsConnection(secret_access_key=Secret(env="S3_SECRET"))
