"""The one application context a command gets: settings, and the resources built from them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from imagen4ctl.settings import Settings, export_fal_key

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from imagen4ctl.adapters.fal import FalAdapter
    from imagen4ctl.adapters.storage import Storage
    from imagen4ctl.db.session import Database
    from imagen4ctl.services.generation import GenerationService
    from imagen4ctl.services.reconcile import Reconciler
    from imagen4ctl.services.recovery import Recovery
    from imagen4ctl.services.recovery_plan import RecoveryOptions


@dataclass
class AppContext:
    settings: Settings
    debug: bool = False
    _database: Database | None = field(default=None, repr=False)

    @classmethod
    def from_typer(cls, ctx: typer.Context) -> AppContext:
        root = ctx.find_root()
        if not isinstance(root.obj, AppContext):  # a command run without the app callback
            root.obj = cls(Settings.load())
        return root.obj

    @property
    def database(self) -> Database:
        from imagen4ctl.db.session import Database

        if self._database is None:
            self._database = Database(self.settings.database_url)
        return self._database

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.database.session() as session:
            yield session

    def storage(self, *, timeout: float = 10.0) -> Storage:
        """The bucket when MINIO_ENDPOINT is set, else the local folder IMAGES_DIR."""
        from imagen4ctl.adapters.storage import LocalStorage, s3_from_settings

        if self.settings.minio_endpoint is None:
            return LocalStorage(self.settings.images_dir.absolute())
        return s3_from_settings(self.settings, timeout=timeout)

    def fal(self) -> FalAdapter | None:
        """A fal adapter with the resolved key (exported as FAL_KEY only if that is unset)."""
        from imagen4ctl.adapters.fal import FalAdapter

        key = self.settings.fal_key
        if key.value is None or key.source is None or key.status == "fail":
            return None
        export_fal_key(key)
        return FalAdapter(key.value, key_source=key.source)

    def recovery(self, options: RecoveryOptions) -> Recovery:
        """fix-pending's engine (reconcile reuses it), on the one generation service."""
        from imagen4ctl.services.recovery import Recovery

        settings = self.settings
        return Recovery(self.generation_service(), default_model=settings.model,
                        platform_url=settings.platform_api_url,
                        fal_key=settings.fal_key.value or "", options=options)

    def reconciler(self, *, kind: str, user_id: str | None, fix: bool) -> Reconciler:
        """reconcile's engine: it repairs rows with fix-pending's, whatever their age."""
        from imagen4ctl.services.reconcile import Reconciler
        from imagen4ctl.services.recovery_plan import RecoveryOptions

        recovery = self.recovery(RecoveryOptions(older_than=0, kind=kind, apply=fix))
        return Reconciler(recovery, prefix=self.settings.images_prefix, kind=kind,
                          user_id=user_id, fix=fix)

    def generation_service(self) -> GenerationService:
        from imagen4ctl.services.generation import GenerationService

        settings = self.settings
        return GenerationService(
            self.database, self.storage(), self.fal(), model=settings.model,
            prefix=settings.images_prefix, max_image_bytes=settings.max_image_bytes,
            trusted_hosts=settings.fal_hosts,
        )
