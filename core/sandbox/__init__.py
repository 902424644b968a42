"""A local emulator of the digi.me Public API v1.7, for development, demos and tests.

>>> from privateshare.sandbox import Sandbox, SandboxSettings
>>> with Sandbox(SandboxSettings.instant()) as sb:  # doctest: +SKIP
...     print(sb.base_url, sb.config_path())
"""

from .server import Sandbox
from .settings import SandboxSettings

__all__ = ["Sandbox", "SandboxSettings"]
