"""The one error every config check raises: one line naming the key, the value and what is valid."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work: the message names the key, the value and what is valid."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
