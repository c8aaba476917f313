"""The one place where environment-variable names live.

Values come from the process environment, then a `.env` file (loaded by the CLI callback
into the process environment without overriding it, so that libraries see it too), then
defaults. Each value remembers where it came from, so `check-config` can say it.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar, cast, get_args
from urllib.parse import urlsplit

from imagen4ctl.durations import parse_duration, parse_size
from imagen4ctl.errors import ConfigError

Source = Literal["env", ".env", "default", "unset"]
Follow = Literal["auto", "stream", "poll"]  # IMAGEN4_FOLLOW (services/following.py)
T = TypeVar("T")


@dataclass(frozen=True)
class Variable:
    name: str
    consumer: str
    default: str | None = None
    secret: bool = False
    help: str = ""


# Where fal publishes its webhook keys, by third-party accounts (adapters/fal_webhook.py).
FAL_WEBHOOK_JWKS_DEFAULT = "https://rest.alpha.fal.ai/.well-known/jwks.json"

# Every variable imagen4ctl reads, in the order check-config lists them.
VARIABLES: tuple[Variable, ...] = (
    Variable("DATABASE_URL", "SQLAlchemy", "sqlite:///imagen4ctl.db",
             help="Database URL; postgresql:// uses psycopg2. Default: SQLite file here."),
    Variable("FAL_KEY", "fal_client", secret=True,
             help="fal.ai API key: the name fal_client itself reads. Wins over the others."),
    Variable("FAL_API_KEY", "imagen4ctl → FAL_KEY", secret=True,
             help="Legacy name of the bot's settings; mapped to FAL_KEY when FAL_KEY is unset."),
    Variable("FAL_KEY_ID", "fal_client", help="fal key id; used only with FAL_KEY_SECRET."),
    Variable("FAL_KEY_SECRET", "fal_client", secret=True,
             help="fal key secret; used only with FAL_KEY_ID."),
    Variable("IMAGEN4_MODEL", "fal_client", "fal-ai/imagen4/preview",
             help="fal endpoint that generates the images."),
    Variable("FAL_RUN_HOST", "fal_client (read at import)",
             help="fal host; set it only to use a proxy or the emulator. Shown, never set."),
    Variable("FAL_QUEUE_RUN_HOST", "fal_client (read at import)",
             help="fal queue host; default queue.<FAL_RUN_HOST>. Shown, never set."),
    Variable("FAL_PLATFORM_API_URL", "imagen4ctl (httpx)", "https://api.fal.ai/v1",
             help="fal Platform API, where finished requests stay for recovery."),
    Variable("FAL_WEBHOOK_JWKS_URL", "imagen4ctl worker (httpx)", FAL_WEBHOOK_JWKS_DEFAULT,
             help="fal's public keys (JWKS) that verify the webhook deliveries a worker "
             "receives with --webhook-url."),
    Variable("SSL_CERT_FILE", "httpx (TLS)", help="CA bundle for TLS, e.g. the emulator's CA."),
    Variable("MINIO_ENDPOINT", "minio",
             help="S3/MinIO host:port (no scheme). Unset: images go to IMAGES_DIR."),
    Variable("MINIO_ACCESS_KEY", "minio", help="S3/MinIO access key."),
    Variable("MINIO_SECRET_KEY", "minio", secret=True, help="S3/MinIO secret key."),
    Variable("MINIO_SECURE", "minio", "false", help="true to talk https to MINIO_ENDPOINT."),
    Variable("MINIO_BUCKET", "minio", "imagen4", help="Bucket that holds the images."),
    Variable("IMAGES_PREFIX", "imagen4ctl", "generations/",
             help="Key prefix of imagen4ctl's objects; it lists or deletes nothing else."),
    Variable("IMAGES_DIR", "imagen4ctl", "./images",
             help="Local image folder, used only when MINIO_ENDPOINT is unset."),
    Variable("STUCK_AFTER", "imagen4ctl", "10m",
             help="A PENDING/PROCESSING row unchanged this long counts as stuck."),
    Variable("IMAGEN4_USER_ID", "imagen4ctl", help="Default --user-id of `generate`."),
    Variable("IMAGEN4_MAX_IMAGE_BYTES", "imagen4ctl", "50MB",
             help="Largest image accepted from fal, checked while streaming."),
    Variable("IMAGEN4_TIMEOUT", "imagen4ctl", "5m",
             help="Default deadline of one generation, submission included."),
    Variable("IMAGEN4_FOLLOW", "imagen4ctl", "auto",
             help="How a generation hears from fal: auto (fal's status stream, polling when "
             "it cannot be had), stream or poll."),
    Variable("FAL_MAX_CONCURRENT", "imagen4ctl worker", "2",
             help="Requests the whole worker fleet keeps at fal at once (fal's starting "
             "account limit is 2)."),
)
BY_NAME = {v.name: v for v in VARIABLES}
SECRET_NAMES = frozenset(v.name for v in VARIABLES if v.secret)

# Fault injection for the crash-safety tests: the process SIGKILLs itself at this phase of
# a generation. Not a setting: check-config does not list it.
CRASH_AT_VARIABLE = "IMAGEN4CTL_CRASH_AT"

# What check-config says, and what a command that needs fal says, when no key is found.
NO_FAL_KEY = "no fal key: FAL_KEY is not set"

# fal_client's own variables that are legitimate but imagen4ctl does not read.
_FOREIGN_KNOWN = frozenset({"FAL_HOME_DIR", "FAL_FORCE_AUTH_BY_USER", "FAL_PROFILE",
                            CRASH_AT_VARIABLE})
# Names people type instead of the real ones; the incident was one of these.
_NEAR_MISS_ALIASES = {
    "FAL_API_TOKEN": "FAL_KEY",
    "FAL_TOKEN": "FAL_KEY",
    "FALKEY": "FAL_KEY",
    "FAL_APIKEY": "FAL_KEY",
    "FAL_AI_KEY": "FAL_KEY",
    "FALAI_KEY": "FAL_KEY",
    "FAL_AI_API_KEY": "FAL_KEY",
    "FAL_SECRET": "FAL_KEY_SECRET",
    "FAL_SECRET_KEY": "FAL_KEY_SECRET",
    "MINIO_SECRET": "MINIO_SECRET_KEY",
    "MINIO_ACCESS": "MINIO_ACCESS_KEY",
    "MINIO_URL": "MINIO_ENDPOINT",
    "MINIO_HOST": "MINIO_ENDPOINT",
    "DATABASE_URI": "DATABASE_URL",
    "DB_URL": "DATABASE_URL",
}
_FAMILIES = ("FAL", "MINIO", "DATABASE", "IMAGEN", "IMAGES", "STUCK")


def fingerprint(value: str) -> str:
    """How a secret is shown: enough to compare two machines, nothing to reuse."""
    digest = hashlib.sha256(value.encode()).hexdigest()[:6]
    return f"set ({len(value)} chars, sha256 {digest})"


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***` (also when the URL is malformed)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        password = None
        parts = None
    if parts is None or password is None:
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            creds, _, host = rest.rpartition("@")
            user = creds.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}" if ":" in creds else url
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True)
class Value:
    """One variable's raw value and where it came from."""

    name: str
    raw: str | None
    source: Source
    origin: str | None = None  # the .env file's path when source is ".env"

    @property
    def is_set(self) -> bool:
        return self.raw is not None and self.raw != ""

    @property
    def display(self) -> str:
        """The value as any output may show it: secrets fingerprinted, URL passwords masked."""
        if not self.is_set:
            return "(empty)" if self.raw == "" else "-"
        assert self.raw is not None
        if self.name in SECRET_NAMES:
            return fingerprint(self.raw)
        if "://" in self.raw:
            return mask_url(self.raw)
        return self.raw

    @property
    def source_label(self) -> str:
        return f".env ({self.origin})" if self.source == ".env" and self.origin else self.source


@dataclass(frozen=True)
class FalKey:
    """The resolved fal key and the verdict on how it was found."""

    value: str | None
    source: str | None  # FAL_KEY, FAL_API_KEY or FAL_KEY_ID:FAL_KEY_SECRET
    status: Literal["ok", "warn", "fail"]
    message: str
    hint: str | None = None

    def __repr__(self) -> str:  # the key itself never reaches a repr
        return f"FalKey(source={self.source!r}, status={self.status!r})"


def resolve_fal_key(values: Mapping[str, Value]) -> FalKey:
    """FAL_KEY wins; else FAL_API_KEY; else FAL_KEY_ID:FAL_KEY_SECRET. Tested for every mix."""

    def get(name: str) -> str | None:
        v = values.get(name)
        return v.raw if v is not None and v.is_set else None

    fal_key, api_key = get("FAL_KEY"), get("FAL_API_KEY")
    key_id, key_secret = get("FAL_KEY_ID"), get("FAL_KEY_SECRET")
    if (key_id is None) != (key_secret is None):
        have, missing = ("FAL_KEY_ID", "FAL_KEY_SECRET") if key_id else (
            "FAL_KEY_SECRET", "FAL_KEY_ID")
        return FalKey(None, None, "fail", f"{have} is set but {missing} is not",
                      f"Set {missing} too, or unset {have} and set FAL_KEY.")
    if fal_key is not None:
        if api_key is not None and api_key != fal_key:
            return FalKey(
                fal_key, "FAL_KEY", "warn",
                "FAL_KEY and FAL_API_KEY are both set and differ: using FAL_KEY",
                "Remove FAL_API_KEY, or make it equal to FAL_KEY.",
            )
        extra = " (FAL_API_KEY is the same)" if api_key is not None else ""
        return FalKey(fal_key, "FAL_KEY", "ok", f"key from FAL_KEY{extra}")
    if api_key is not None:
        return FalKey(
            api_key, "FAL_API_KEY", "warn",
            "only FAL_API_KEY is set: imagen4ctl maps it to FAL_KEY, but any other fal_client "
            "program here finds no key (the empty-gallery incident's root cause)",
            'Set FAL_KEY="$FAL_API_KEY" (or rename FAL_API_KEY to FAL_KEY in .env).',
        )
    if key_id is not None and key_secret is not None:
        return FalKey(f"{key_id}:{key_secret}", "FAL_KEY_ID:FAL_KEY_SECRET", "ok",
                      "key from FAL_KEY_ID and FAL_KEY_SECRET")
    return FalKey(None, None, "fail", NO_FAL_KEY,
                  "Set FAL_KEY (or FAL_API_KEY) to your fal.ai API key.")


def styling_disabled() -> bool:
    """NO_COLOR (no-color.org), read when the consoles are made: no colour, no bold, no dim."""
    return bool(os.environ.get("NO_COLOR"))


def crash_point(phase: str) -> None:
    """Die here, as `kill -9` would, when the crash-safety tests ask for this phase."""
    if os.environ.get(CRASH_AT_VARIABLE) == phase:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def export_fal_key(key: FalKey, environ: MutableMapping[str, str] | None = None) -> bool:
    """Export the resolved key as FAL_KEY for fal_client, only when FAL_KEY is unset.

    The one function that maps FAL_API_KEY (or the id/secret pair) onto fal_client's name.
    Returns whether it exported.
    """
    env = os.environ if environ is None else environ
    if env.get("FAL_KEY") or key.value is None:
        return False
    env["FAL_KEY"] = key.value
    return True


def near_misses(names: Iterator[str] | list[str]) -> dict[str, str]:
    """Variables that look like one of ours but aren't: {typed name: the name we read}."""
    known = set(BY_NAME) | _FOREIGN_KNOWN
    found: dict[str, str] = {}
    for name in names:
        upper = name.upper()
        if name in known or not upper.startswith(_FAMILIES):
            continue
        guess = _NEAR_MISS_ALIASES.get(upper)
        if guess is None:
            close = difflib.get_close_matches(upper, list(BY_NAME), n=1, cutoff=0.75)
            guess = close[0] if close else None
        if guess is not None and guess != name:
            found[name] = guess
    return found


def read_env_file(path: Path) -> dict[str, str | None]:
    """Parse a .env file; a line python-dotenv cannot parse is a one-line error, not a warning."""
    from dotenv.parser import parse_stream

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read env file {path}: {e.strerror}",
                          hint="Check the --env-file path.") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"env file {path} is not UTF-8 text") from e
    values: dict[str, str | None] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.line
            shown = binding.original.string.strip().splitlines()[0][:40] if (
                binding.original.string.strip()) else ""
            raise ConfigError(
                f"env file {path}, line {line}: cannot parse {shown!r}"
                if not _looks_secret(shown) else f"env file {path}, line {line}: cannot parse it",
                hint="Use NAME=value lines; quote values that contain spaces or #.",
            )
        if binding.key is not None:
            values[binding.key] = binding.value
    return values


def _looks_secret(line: str) -> bool:
    name = line.split("=", 1)[0].strip().upper()
    return "KEY" in name or "SECRET" in name or "PASSWORD" in name or "://" in line


@dataclass(frozen=True)
class Settings:
    values: Mapping[str, Value]
    env_file: Path | None = None
    foreign_names: tuple[str, ...] = field(default=())  # every other name seen, for near misses

    @classmethod
    def load(
        cls,
        env_file: Path | None = None,
        *,
        environ: MutableMapping[str, str] | None = None,
        default_env_file: bool = True,
    ) -> Settings:
        """Read the environment, then `env_file` (or ./.env if present), into the environment.

        The .env values go into `environ` without overriding what is already there, so that
        libraries (fal_client's hosts, httpx's SSL_CERT_FILE) see them too.
        """
        env = os.environ if environ is None else environ
        if env_file is None and default_env_file and Path(".env").is_file():
            env_file = Path(".env")
        file_values: dict[str, str | None] = {}
        if env_file is not None:
            if not env_file.is_file():
                raise ConfigError(f"env file {env_file} does not exist",
                                  hint="Check the --env-file path.")
            file_values = read_env_file(env_file)
        before = dict(env)
        for name, raw in file_values.items():
            if name not in before and raw is not None:
                env[name] = raw
        origin = str(env_file) if env_file is not None else None
        values: dict[str, Value] = {}
        for var in VARIABLES:
            if var.name in before:
                values[var.name] = Value(var.name, before[var.name], "env")
            elif file_values.get(var.name) is not None:
                values[var.name] = Value(var.name, file_values[var.name], ".env", origin)
            elif var.default is not None:
                values[var.name] = Value(var.name, var.default, "default")
            else:
                values[var.name] = Value(var.name, None, "unset")
        seen = sorted(set(before) | set(file_values))
        return cls(values, env_file, tuple(n for n in seen if n not in BY_NAME))

    # --- typed accessors: each raises ConfigError naming the variable on a bad value ---

    def raw(self, name: str) -> str | None:
        value = self.values[name]
        return value.raw if value.is_set else None

    def _or_default(self, name: str) -> str:
        raw = self.raw(name)
        default = BY_NAME[name].default
        assert default is not None
        return raw if raw is not None else default

    @property
    def fal_key(self) -> FalKey:
        return resolve_fal_key(self.values)

    @property
    def database_url(self) -> str:
        return self._or_default("DATABASE_URL")

    @property
    def model(self) -> str:
        return self._or_default("IMAGEN4_MODEL").strip("/")

    @property
    def platform_api_url(self) -> str:
        return self._or_default("FAL_PLATFORM_API_URL").rstrip("/")

    @property
    def webhook_jwks_url(self) -> str:
        url = self._or_default("FAL_WEBHOOK_JWKS_URL").strip()
        if urlsplit(url).scheme not in ("https", "http"):
            raise ConfigError(f"FAL_WEBHOOK_JWKS_URL must be an http(s) URL, not {url!r}",
                              hint=f"fal's is {FAL_WEBHOOK_JWKS_DEFAULT}.")
        return url

    @property
    def webhook_jwks_set(self) -> bool:
        """FAL_WEBHOOK_JWKS_URL was set (env or .env): check-config then probes it."""
        return self.values["FAL_WEBHOOK_JWKS_URL"].source in ("env", ".env")

    @property
    def minio_endpoint(self) -> str | None:
        endpoint = self.raw("MINIO_ENDPOINT")
        if endpoint is None:
            return None
        endpoint = endpoint.strip()
        if "://" in endpoint or "/" in endpoint or not endpoint:
            raise ConfigError(
                f"MINIO_ENDPOINT must be host:port without a scheme or path, not {endpoint!r}",
                hint="For example MINIO_ENDPOINT=minio.internal:9000 (and MINIO_SECURE=true "
                "for https).",
            )
        return endpoint

    @property
    def minio_secure(self) -> bool:
        return _parse_bool("MINIO_SECURE", self._or_default("MINIO_SECURE"))

    @property
    def minio_bucket(self) -> str:
        return self._or_default("MINIO_BUCKET")

    @property
    def images_prefix(self) -> str:
        from imagen4ctl.keys import validate_prefix

        prefix = self._or_default("IMAGES_PREFIX")
        try:
            return validate_prefix(prefix)
        except ConfigError as e:
            raise ConfigError(f"IMAGES_PREFIX: {e.message}", hint=e.hint) from e

    @property
    def images_dir(self) -> Path:
        return Path(self._or_default("IMAGES_DIR")).expanduser()

    @property
    def stuck_after(self) -> float:
        return _parsed("STUCK_AFTER", self._or_default("STUCK_AFTER"), parse_duration)

    @property
    def timeout(self) -> float:
        return _parsed("IMAGEN4_TIMEOUT", self._or_default("IMAGEN4_TIMEOUT"), parse_duration)

    @property
    def max_image_bytes(self) -> int:
        return _parsed("IMAGEN4_MAX_IMAGE_BYTES", self._or_default("IMAGEN4_MAX_IMAGE_BYTES"),
                       parse_size)

    @property
    def fal_max_concurrent(self) -> int:
        raw = self._or_default("FAL_MAX_CONCURRENT").strip()
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"FAL_MAX_CONCURRENT must be a whole number from 1, not {raw!r}",
                              hint="For example FAL_MAX_CONCURRENT=2 (fal's starting limit).")
        return int(raw)

    @property
    def follow(self) -> Follow:
        raw = self._or_default("IMAGEN4_FOLLOW").strip().lower()
        if raw in get_args(Follow):
            return cast(Follow, raw)
        raise ConfigError(f"IMAGEN4_FOLLOW must be auto, stream or poll, not {raw!r}",
                          hint="auto follows fal's status stream and polls when it cannot.")

    @property
    def fal_hosts(self) -> frozenset[str]:
        """Hosts of an explicitly configured fal (emulator, proxy): trusted for image URLs."""
        hosts = (self.raw("FAL_RUN_HOST"), self.raw("FAL_QUEUE_RUN_HOST"))
        return frozenset(urlsplit(f"//{h}").hostname or "" for h in hosts if h) - {""}

    @property
    def default_user_id(self) -> str | None:
        return self.raw("IMAGEN4_USER_ID")

    def secret_values(self) -> list[str]:
        """Every secret this process knows, for redacting unexpected error text."""
        secrets = [v.raw for n, v in self.values.items() if n in SECRET_NAMES and v.raw]
        password = _url_password(self.database_url)
        return [s for s in [*secrets, password] if s]

    def near_misses(self) -> dict[str, str]:
        return near_misses(list(self.foreign_names))


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _parsed(name: str, raw: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(raw)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from e

