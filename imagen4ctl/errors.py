"""Every error a user can cause, with the one-line message and hint the CLI prints.

`cli.main` catches `Imagen4ctlError` once: `error: <message>`, `hint: <hint>` on stderr,
exit with `.exit_code`. Messages never contain secrets: build them from masked values.
"""

from __future__ import annotations


class Imagen4ctlError(Exception):
    exit_code = 1
    readme = "troubleshooting"  # the README section that explains this error

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(Imagen4ctlError):
    """Bad input from the command line or the environment: exit 2, like Click's own."""

    exit_code = 2
    readme = "usage-errors"


class ConfigError(UsageError):
    """A setting has a value that cannot work (bad URL, bad duration, half a key pair)."""

    readme = "settings"


class DatabaseError(Imagen4ctlError):
    """The database is unreachable, locked or refuses the statement."""

    readme = "database"


class SchemaError(DatabaseError):
    """The `generations` table is missing, behind, or not what imagen4ctl expects."""

    readme = "schema-missing-or-behind"


class StorageError(Imagen4ctlError):
    """The bucket or the local image folder cannot be used."""

    readme = "storage"


class FalError(Imagen4ctlError):
    """fal.ai could not be asked, or said no."""

    readme = "fal"


class FalCredentialsMissing(FalError):
    readme = "no-fal-key"


class FalKeyRejected(FalError):
    """fal answered 401/403 for the key."""

    readme = "fal-rejected-the-key"


class FalAccountLocked(FalError):
    """fal refused a submission because the account is locked (balance, admin lock): no key
    change helps, and every further submission would be refused the same way."""

    readme = "fal-account-locked"


class FalUnavailable(FalError):
    """fal could not be reached (connection refused, TLS failure, deadline)."""

    readme = "cannot-reach-fal"


class FalRequestRejected(FalError):
    """fal refused the request itself (422 validation, 404 model, other 4xx)."""

    readme = "fal-refused-the-request"


class GenerationFailed(Imagen4ctlError):
    """The generation ended FAILED; the row records the same reason."""

    readme = "a-generation-failed"


class GenerationPending(Imagen4ctlError):
    """The command stopped waiting while fal still works; the row stays PROCESSING."""

    readme = "a-generation-is-still-pending"
