"""Every error a user can cause, with the one-line message and hint the CLI prints.

`cli.main` catches `Imagen4ctlError` once: `error: <message>`, `hint: <hint>` on stderr,
exit with `.exit_code`. Messages never contain secrets: build them from masked values.
"""

from __future__ import annotations


class Imagen4ctlError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(Imagen4ctlError):
    """Bad input from the command line or the environment: exit 2, like Click's own."""

    exit_code = 2


class ConfigError(UsageError):
    """A setting has a value that cannot work (bad URL, bad duration, half a key pair)."""


class DatabaseError(Imagen4ctlError):
    """The database is unreachable, locked or refuses the statement."""


class SchemaError(DatabaseError):
    """The `generations` table is missing, behind, or not what imagen4ctl expects."""


class StorageError(Imagen4ctlError):
    """The bucket or the local image folder cannot be used."""


class FalError(Imagen4ctlError):
    """fal.ai could not be asked, or said no."""


class FalCredentialsMissing(FalError):
    pass


class FalKeyRejected(FalError):
    """fal answered 401/403 for the key."""


class FalUnavailable(FalError):
    """fal could not be reached (connection refused, TLS failure, deadline)."""


class FalRequestRejected(FalError):
    """fal refused the request itself (422 validation, 404 model, other 4xx)."""


class GenerationFailed(Imagen4ctlError):
    """The generation ended FAILED; the row records the same reason."""


class GenerationPending(Imagen4ctlError):
    """The command stopped waiting while fal still works; the row stays PROCESSING."""
