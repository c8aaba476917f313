"""The checks behind `check-config`: each one bounded, read-only, and skipped when its
prerequisite failed. No Typer or Rich here."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from imagen4ctl.db.driver import SCHEMA_HINT
from imagen4ctl.endpoints import ENDPOINTS, MODELS_HINT, closest
from imagen4ctl.errors import Imagen4ctlError, StorageError
from imagen4ctl.settings import VARIABLES, Settings

if TYPE_CHECKING:
    from imagen4ctl.adapters.storage import S3Storage

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    hint: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return asdict(self)


@dataclass(frozen=True)
class SettingRow:
    name: str
    value: str
    source: str
    consumer: str


@dataclass(frozen=True)
class DoctorReport:
    checks: list[Check]
    settings: list[SettingRow]

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "checks": [c.to_json() for c in self.checks],
            "settings": {r.name: {"value": r.value, "source": r.source} for r in self.settings},
        }


def _guard(name: str, probe: Callable[[], Check]) -> Check:
    """A check that raised is a failed check, with the error's own one-line message."""
    try:
        return probe()
    except Imagen4ctlError as e:
        return Check(name, "fail", e.message, e.hint)


def diagnose(settings: Settings, *, timeout: float = 5.0, offline: bool = False) -> DoctorReport:
    checks: list[Check] = []
    credentials = check_fal_credentials(settings)
    checks.append(credentials)
    if credentials.status == "fail":
        checks.append(Check("fal_api", "skip", "skipped: no usable fal key"))
    elif offline:
        checks.append(Check("fal_api", "skip", "skipped: --offline"))
    else:
        checks.append(_guard("fal_api", lambda: check_fal_api(settings, timeout, account=True)))
    database = _guard("database", lambda: check_database(settings, timeout, offline))
    checks.append(database)
    if database.status in {"fail", "skip"} or database.message.startswith("no database file"):
        checks.append(Check("schema", "skip", f"skipped: database is {database.status}"
                            if database.status != "warn" else "skipped: no database file yet",
                            SCHEMA_HINT if database.status == "warn" else None))
    else:
        checks.append(_guard("schema", lambda: check_schema(settings, timeout)))
    checks.append(_guard("storage", lambda: check_storage(settings, timeout, offline)))
    model = check_model(settings)
    if model is not None:
        checks.append(model)
    if settings.webhook_jwks_set:
        checks.append(_guard("fal_webhooks", lambda: check_webhook_keys(settings, timeout,
                                                                        offline)))
    misses = settings.near_misses()
    if misses:
        checks.append(Check(
            "variable_names", "warn",
            "; ".join(f"{typed} is set: did you mean {real}?" for typed, real in misses.items()),
            "Rename " + ", ".join(f"{t} to {r}" for t, r in misses.items()) + ".",
        ))
    return DoctorReport(checks, setting_rows(settings))


def setting_rows(settings: Settings) -> list[SettingRow]:
    return [
        SettingRow(v.name, settings.values[v.name].display, settings.values[v.name].source_label,
                   v.consumer)
        for v in VARIABLES
    ]


def check_fal_credentials(settings: Settings) -> Check:
    key = settings.fal_key
    message = key.message
    if key.status == "fail":
        misses = [t for t, real in settings.near_misses().items() if real.startswith("FAL_KEY")]
        if misses:
            message += f" ({', '.join(misses)} is set: did you mean FAL_KEY?)"
    return Check("fal_credentials", key.status, message, key.hint)


def check_fal_api(settings: Settings, timeout: float, *, account: bool = False) -> Check:
    """The key against fal's queue (free); with `account`, the balance too (check-config)."""
    from imagen4ctl.adapters.fal import probe_key

    key = settings.fal_key
    assert key.value is not None and key.source is not None
    verdict = probe_key(key.value, settings.model, timeout=timeout, key_source=key.source)
    if not verdict.accepted:
        return Check("fal_api", "fail", verdict.message, verdict.hint)
    if not account:
        return Check("fal_api", "ok", verdict.message)
    return _account_state(settings, key.value, verdict.message, timeout)


def _account_state(settings: Settings, key: str, accepted: str, timeout: float) -> Check:
    """The balance, fal's one read-only sign of a locked account; never a paid call."""
    from imagen4ctl.adapters.fal_platform import account_balance

    try:
        found = account_balance(settings.platform_api_url, key, timeout=timeout,
                                trusted_hosts=settings.fal_hosts)
    except Imagen4ctlError as e:
        return Check("fal_api", "ok", f"{accepted}; could not check the account's state: "
                     f"{e.message}")
    amount = f"{found.balance:.2f}".rstrip("0").rstrip(".") + f" {found.currency}".rstrip()
    if found.balance <= 0:
        return Check("fal_api", "warn", f"{accepted}, but the fal account balance is {amount}: "
                     "submissions will be refused (account locked)",
                     "Top up at https://fal.ai/dashboard/billing; see "
                     "README.md#fal-account-locked.")
    return Check("fal_api", "ok", f"{accepted}; balance {amount} (a lock is not visible to "
                 "this probe)")


def check_model(settings: Settings) -> Check | None:
    """A warning when IMAGEN4_MODEL is no endpoint of the registry: `generate` refuses it."""
    model = settings.model
    if model in ENDPOINTS:
        return None
    guess = closest(model)
    return Check("fal_model", "warn",
                 f"IMAGEN4_MODEL {model!r} is not an Imagen 4 endpoint imagen4ctl knows"
                 + (f": did you mean {guess}?" if guess else ""),
                 f"Set IMAGEN4_MODEL to one of {', '.join(ENDPOINTS)}; {MODELS_HINT}")


def check_webhook_keys(settings: Settings, timeout: float, offline: bool) -> Check:
    """FAL_WEBHOOK_JWKS_URL, when set: the keys a worker verifies fal's deliveries with."""
    from imagen4ctl.adapters.fal_webhook import probe_jwks

    url = settings.webhook_jwks_url
    if offline:
        return Check("fal_webhooks", "skip", f"skipped: --offline ({url})")
    probe = probe_jwks(url, timeout)
    if not probe.ok:
        return Check("fal_webhooks", "fail", probe.message,
                     "Check FAL_WEBHOOK_JWKS_URL: without its keys a worker refuses every "
                     "webhook delivery (503), and follows its rows itself.")
    return Check("fal_webhooks", "ok", probe.message)


def check_database(settings: Settings, timeout: float, offline: bool) -> Check:
    from imagen4ctl.db.session import Database

    db = Database(settings.database_url, connect_timeout=timeout)
    path = db.sqlite_path
    if path is not None:
        if not path.parent.is_dir():
            return Check("database", "fail", f"the folder of {db.describe()} does not exist",
                         f"Create {path.parent}, or point DATABASE_URL elsewhere.")
        if not path.exists():
            return Check("database", "warn", f"no database file yet: {db.describe()}",
                         "`imagen4ctl db upgrade` creates it.")
    elif offline:
        return Check("database", "skip", f"skipped: --offline ({db.describe()})")
    db.ping()
    return Check("database", "ok", f"connected to {db.describe()}")


def check_schema(settings: Settings, timeout: float) -> Check:
    from imagen4ctl.db.migrate import schema_state
    from imagen4ctl.db.session import Database

    state = schema_state(Database(settings.database_url, connect_timeout=timeout))
    hint = SCHEMA_HINT
    if not state.table_exists:
        return Check("schema", "fail", "the generations table does not exist", hint)
    if state.missing_columns:
        return Check("schema", "fail", "generations lacks columns: "
                     + ", ".join(state.missing_columns),
                     "See README.md#the-generations-table for the columns it needs.")
    if state.adoptable:
        return Check("schema", "fail", "generations exists but has no imagen4ctl revision",
                     hint + " (it adopts the existing table)")
    if not state.up_to_date:
        return Check("schema", "fail",
                     f"schema revision {state.current}, imagen4ctl needs {state.head}", hint)
    return Check("schema", "ok", f"revision {state.current} (head)")


def open_bucket(settings: Settings, timeout: float) -> S3Storage:
    """The configured bucket, known to exist; ConfigError or StorageError say what is wrong.

    Shared by check-config (which then writes a probe) and health (which only lists).
    """
    from imagen4ctl.adapters.storage import s3_from_settings

    storage = s3_from_settings(settings, timeout=timeout)
    if not storage.bucket_exists():
        raise StorageError(f"bucket {settings.minio_bucket!r} does not exist at "
                           f"{settings.minio_endpoint}",
                           hint="Create it, or set MINIO_BUCKET to an existing bucket.")
    return storage


def check_storage(settings: Settings, timeout: float, offline: bool) -> Check:
    endpoint = settings.minio_endpoint
    if endpoint is None:
        folder = settings.images_dir.absolute()
        if folder.exists() and not folder.is_dir():
            return Check("storage", "fail", f"IMAGES_DIR {folder} is a file, not a folder",
                         "Point IMAGES_DIR at a folder.")
        if folder.is_dir() and not os.access(folder, os.W_OK):
            return Check("storage", "fail", f"IMAGES_DIR {folder} is not writable",
                         "Fix its permissions or point IMAGES_DIR elsewhere.")
        state = "" if folder.is_dir() else " (created on first use)"
        return Check("storage", "warn",
                     f"images go to the local folder {folder}{state}: MINIO_ENDPOINT is unset",
                     "Set MINIO_ENDPOINT, MINIO_ACCESS_KEY and MINIO_SECRET_KEY to use the "
                     "bucket.")
    if offline:
        return Check("storage", "skip", f"skipped: --offline (s3://{settings.minio_bucket} at "
                     f"{endpoint})")
    storage = open_bucket(settings, timeout)
    storage.probe(settings.images_prefix)
    return Check("storage", "ok", f"wrote, read and deleted a probe object in "
                 f"{storage.describe()}")

