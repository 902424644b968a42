"""The privateshare error hierarchy.

Every error a user can meet is a subclass of :class:`PrivateShareError`, so
``except PrivateShareError`` catches everything we raise on purpose. Messages say
what was wrong, where, and how to fix it; they never carry a secret.
"""

from __future__ import annotations


class PrivateShareError(Exception):
    """Base of every error privateshare raises on purpose."""


class ConfigError(PrivateShareError):
    """The configuration is wrong: one or more problems, each located precisely."""

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = head + self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{head}{len(self.problems)} problems in the configuration:\n{lines}"
        super().__init__(message)


class PluginError(PrivateShareError):
    """A plugin could not be found, loaded or run."""


class KeyStoreError(PrivateShareError):
    """A contract private key is missing, unreadable or unsuitable."""


class TokenStoreError(PrivateShareError):
    """A token record could not be read, decrypted or written."""


class SinkError(PrivateShareError):
    """A sink could not accept a file."""


class UnsafeFileNameError(SinkError):
    """A server-supplied file name would escape the sink's root."""


class FileDecryptionError(PrivateShareError):
    """A file could not be decrypted; ``check`` names the check that failed.

    ``check`` is one of ``size``, ``key``, ``padding``, ``hash``, ``decompression``.
    """

    def __init__(self, check: str, message: str, file_name: str | None = None) -> None:
        self.check = check
        self.file_name = file_name
        where = f" ({file_name})" if file_name else ""
        super().__init__(f"{check} check failed{where}: {message}")


class DigimeError(PrivateShareError):
    """Base of errors about talking to the digi.me API."""


class ValidationError(DigimeError):
    """A request argument or a server response does not have the expected shape."""


class MalformedAnswer(ValidationError):
    """An answer that does not parse (not JSON, a garbled header): often one cut or mangled on
    the way, so the calls that may be repeated are retried (:mod:`privateshare.retry`)."""


class ServerError(DigimeError):
    """The digi.me API answered with an error (protocol.md#errors)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "DigiMeServerError",
        reference: str = "Unknown reference",
        status_code: int = 0,
        status_message: str = "",
    ) -> None:
        self.code = code
        self.reference = reference
        self.status_code = status_code
        self.status_message = status_message
        super().__init__(f"{message} (code {code}, HTTP {status_code}, reference {reference})")


class SDKInvalidError(ServerError):
    """The API does not accept this SDK or SDK version."""


class AuthorizationRequired(DigimeError):
    """The user's token cannot be refreshed: the user must consent again."""

    def __init__(self, message: str, *, user_id: str | None = None) -> None:
        self.user_id = user_id
        super().__init__(message)


class TransportError(DigimeError):
    """A request could not be completed (connection, timeout, truncated body)."""


class ResponseTooLarge(DigimeError):
    """An answer was larger than the configured cap; it was not read further."""
