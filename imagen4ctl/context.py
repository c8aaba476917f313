"""The one application context a command gets: settings, and the resources built from them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    from imagen4ctl.services.webhooks import WebhookInbox
    from imagen4ctl.services.worker import Worker, WorkerOptions
    from imagen4ctl.services.worker_state import EventSink


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

    def worker(self, options: WorkerOptions, *, on_event: EventSink,
               scrub: Callable[[str], str]) -> Worker:
        """The worker: fix-pending's engine and the generation service in a loop, with the
        families of `imagen4ctl metrics` on its /metrics."""
        from imagen4ctl.services.metrics import MetricsCollector
        from imagen4ctl.services.recovery_plan import RecoveryOptions
        from imagen4ctl.services.worker import Worker

        settings = self.settings
        recovery = self.recovery(RecoveryOptions(
            older_than=settings.stuck_after, kind=options.kind, apply=True,
            concurrency=1, timeout=settings.timeout, handed_over=True,
            claim_timeout=options.claim_timeout))
        collector = MetricsCollector(settings) if options.metrics_port is not None else None
        return Worker(recovery, options=options, cap=settings.fal_max_concurrent,
                      on_event=on_event, scrub=scrub,
                      metrics=collector.collect if collector is not None else None,
                      webhooks=self._webhooks(recovery, options, on_event))

    def _webhooks(self, recovery: Recovery, options: WorkerOptions,
                  on_event: EventSink) -> WebhookInbox | None:
        """With --webhook-url: fal's deliveries, verified against FAL_WEBHOOK_JWKS_URL."""
        if options.webhook_url is None:
            return None
        from imagen4ctl.adapters.fal_webhook import WebhookVerifier
        from imagen4ctl.services.webhooks import webhook_mode, webhook_path

        verifier = WebhookVerifier(self.settings.webhook_jwks_url)
        return webhook_mode(recovery.service, verifier, url=options.webhook_url,
                            path=webhook_path(options.webhook_url), grace=options.webhook_grace,
                            owner=recovery.token, claim_timeout=options.claim_timeout,
                            timeout=self.settings.timeout, on_event=on_event)

    def generation_service(self) -> GenerationService:
        from imagen4ctl.services.generation import GenerationService

        settings = self.settings
        return GenerationService(
            self.database, self.storage(), self.fal(), model=settings.model,
            prefix=settings.images_prefix, max_image_bytes=settings.max_image_bytes,
            trusted_hosts=settings.fal_hosts, follow=settings.follow,
        )
