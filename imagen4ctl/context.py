"""The one application context a command gets: settings, and the resources built from them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from imagen4ctl.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from imagen4ctl.adapters.storage import Storage
    from imagen4ctl.db.session import Database


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
        from imagen4ctl.adapters.storage import storage_from_settings

        return storage_from_settings(self.settings, timeout=timeout)
