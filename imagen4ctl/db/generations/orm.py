"""The statements that run through SQLAlchemy sessions: for the commands that load the ORM
anyway (health, metrics, gallery, fix-pending's changes to the rows it holds, reconcile,
backup and restore).
SQLAlchemy is imported inside each function, so importing this module costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from imagen4ctl.db.generations.rows import COLUMNS, GenerationRow, from_orm
from imagen4ctl.db.values import COMPLETED, FAILED, IN_FLIGHT, STATUSES, as_utc, utcnow

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement
    from sqlalchemy.orm import Session

    from imagen4ctl.db.session import Database


def _user_scope(user_id: str | None) -> list[ColumnElement[bool]]:
    from imagen4ctl.db.models import Generation as g  # noqa: N813

    return [g.user_id == user_id] if user_id is not None else []


def _stuck_scope(user_id: str | None, cutoff: datetime) -> list[ColumnElement[bool]]:
    from imagen4ctl.db.models import Generation as g  # noqa: N813

    return [*_user_scope(user_id), g.status.in_(IN_FLIGHT), g.updated_at < cutoff]


def counts_by_status(session: Session, *, user_id: str | None = None) -> dict[str, int]:
    from sqlalchemy import func, select

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    return {status: int(n) for status, n in session.execute(
        select(g.status, func.count()).where(*_user_scope(user_id)).group_by(g.status))}


def count_stuck(session: Session, *, cutoff: datetime, user_id: str | None = None) -> int:
    """PENDING/PROCESSING rows unchanged since `cutoff`."""
    from sqlalchemy import func, select

    return int(session.scalar(select(func.count()).where(*_stuck_scope(user_id, cutoff)))
               or 0)


_PROBLEM_COLUMNS = ("id", "user_id", "kind", "status", "prompt", "aspect_ratio",
                    "fal_request_id", "error", "created_at", "updated_at")


def _problem_rows(session: Session, where: list[ColumnElement[bool]], order: Sequence[Any],
                  limit: int, read_at: datetime) -> list[GenerationRow]:
    from sqlalchemy import select

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    query = select(*(getattr(g, c) for c in _PROBLEM_COLUMNS)).where(*where).order_by(*order)
    return [GenerationRow(r.id, r.user_id, r.kind, r.status, r.prompt or "", r.aspect_ratio,
                          r.fal_request_id, error=r.error, created_at=r.created_at,
                          updated_at=r.updated_at, read_at=read_at)
            for r in session.execute(query.limit(limit))]


def stuck_rows(session: Session, *, cutoff: datetime, limit: int, read_at: datetime,
               user_id: str | None = None) -> list[GenerationRow]:
    """The oldest stuck rows, at most `limit`."""
    from imagen4ctl.db.models import Generation as g  # noqa: N813

    return _problem_rows(session, _stuck_scope(user_id, cutoff), (g.created_at, g.id), limit,
                         read_at)


def failed_rows(session: Session, *, limit: int, read_at: datetime,
                user_id: str | None = None) -> list[GenerationRow]:
    """The most recently changed FAILED rows, at most `limit`."""
    from imagen4ctl.db.models import Generation as g  # noqa: N813

    return _problem_rows(session, [*_user_scope(user_id), g.status == FAILED],
                         (g.updated_at.desc(), g.id.desc()), limit, read_at)


def completed_rows(session: Session, *, limit: int, user_id: str | None = None
                   ) -> list[GenerationRow]:
    """The newest COMPLETED rows (by creation), at most `limit`."""
    from sqlalchemy import select

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    columns = ("id", "user_id", "kind", "prompt", "aspect_ratio", "created_at", "result_urls")
    query = (select(*(getattr(g, c) for c in columns))
             .where(*_user_scope(user_id), g.status == COMPLETED)
             .order_by(g.created_at.desc(), g.id.desc()).limit(limit))
    return [from_orm(columns, r) for r in session.execute(query)]


def stuck_count_and_oldest(session: Session, *, cutoff: datetime
                           ) -> tuple[int, datetime | None]:
    """Stuck rows of any kind, and when the oldest of them was created: one query."""
    from sqlalchemy import func, select

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    count, oldest = session.execute(
        select(func.count(), func.min(g.created_at)).where(*_stuck_scope(None, cutoff))
    ).one()
    return int(count or 0), as_utc(oldest)


def outcomes_since(session: Session, *, since: datetime, stuck_cutoff: datetime
                   ) -> tuple[int, int, int]:
    """(COMPLETED, FAILED, stuck) among the rows created since `since`: one query."""
    from sqlalchemy import and_, case, func, select

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    stuck = and_(g.status.in_(IN_FLIGHT), g.updated_at < stuck_cutoff)
    completed, failed, stuck_count = session.execute(
        select(func.count(case((g.status == COMPLETED, 1))),
               func.count(case((g.status == FAILED, 1))),
               func.count(case((stuck, 1))))
        .where(g.created_at >= since)
    ).one()
    return int(completed or 0), int(failed or 0), int(stuck_count or 0)


def bounded_counts(session: Session, *, max_kinds: int, max_other_statuses: int,
                   other: str) -> dict[tuple[str, str], int]:
    """{(kind, status): rows}, kinds and unknown statuses past their limits folded into
    `other`. Three GROUP BY queries whose results are bounded by the limits, whatever the
    table holds."""
    from sqlalchemy import case, func, literal, select

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    kinds = list(session.scalars(
        select(g.kind).group_by(g.kind).order_by(func.count().desc(), g.kind).limit(max_kinds)))
    statuses = [*STATUSES, *session.scalars(
        select(g.status).where(g.status.not_in(STATUSES)).group_by(g.status)
        .order_by(func.count().desc(), g.status).limit(max_other_statuses))]
    folded = select(
        case((g.kind.in_(kinds), g.kind), else_=literal(other)).label("kind"),
        case((g.status.in_(statuses), g.status), else_=literal(other)).label("status"),
    ).subquery()
    return {
        (kind, status): int(count)
        for kind, status, count in session.execute(
            select(folded.c.kind, folded.c.status, func.count())
            .group_by(folded.c.kind, folded.c.status))
    }


def _latency_seconds(session: Session) -> ColumnElement[float]:
    from sqlalchemy import Float, cast, extract, func

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    if session.get_bind().dialect.name == "sqlite":  # naive UTC text: julianday reads it
        return (func.julianday(g.completed_at) - func.julianday(g.submitted_at)) * 86400.0
    return cast(extract("epoch", g.completed_at - g.submitted_at), Float)


def _timed() -> tuple[ColumnElement[bool], ...]:
    from imagen4ctl.db.models import Generation as g  # noqa: N813

    return (g.status == COMPLETED, g.submitted_at.is_not(None), g.completed_at.is_not(None),
            g.completed_at >= g.submitted_at)


def latency_total(session: Session) -> tuple[float, int]:
    """Seconds from submission to completion (`submitted_at` → `completed_at`) summed over
    every COMPLETED row with both, and how many rows that is."""
    from sqlalchemy import func, select

    total, count = session.execute(
        select(func.sum(_latency_seconds(session)), func.count()).where(*_timed())).one()
    return float(total or 0.0), int(count or 0)


def latency_quantiles(session: Session, *, since: datetime, quantiles: Sequence[float]
                      ) -> dict[float, float | None]:
    """Quantiles of the same latency over the rows completed since `since`, as PostgreSQL's
    percentile_cont computes them (linear interpolation); SQLite has no percentile, so it
    fetches the two rows around each rank with LIMIT/OFFSET."""
    from sqlalchemy import func, select

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    latency = _latency_seconds(session)
    recent = (*_timed(), g.completed_at >= since)
    if session.get_bind().dialect.name == "postgresql":
        row = session.execute(select(
            *(func.percentile_cont(q).within_group(latency) for q in quantiles)
        ).where(*recent)).one()
        return {q: float(v) if v is not None else None
                for q, v in zip(quantiles, row, strict=True)}
    n = int(session.scalar(select(func.count()).where(*recent)) or 0)
    return {q: _interpolated(session, latency, recent, q, n) for q in quantiles}


def _interpolated(session: Session, latency: ColumnElement[float],
                  where: tuple[ColumnElement[bool], ...], q: float, n: int) -> float | None:
    from sqlalchemy import select

    if n == 0:
        return None
    position = q * (n - 1)
    low = math.floor(position)
    values = [float(v) for v in session.scalars(
        select(latency).where(*where).order_by(latency).limit(2).offset(low))]
    if not values:
        return None
    high = values[1] if len(values) > 1 else values[0]
    return values[0] + (position - low) * (high - values[0])


def stream_completed(db: Database, *, kind: str, user_id: str | None = None,
                     batch: int = 500) -> Iterator[GenerationRow]:
    """Every COMPLETED row of `kind`, by id, `batch` at a time (never all in memory)."""
    from sqlalchemy import select

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    query = (select(g).where(g.status == COMPLETED, g.kind == kind)
             .order_by(g.id).execution_options(yield_per=batch))
    if user_id is not None:
        query = query.where(g.user_id == user_id)
    with db.session() as session:
        for row in session.scalars(query):
            session.expunge(row)
            yield from_orm(COLUMNS, row)


def result_urls_of(db: Database, ids: Iterable[int]) -> list[Any]:
    """The `result_urls` of the rows with these ids (those that exist), in no order."""
    from sqlalchemy import select

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    with db.session() as session:
        return list(session.scalars(select(g.result_urls).where(g.id.in_(ids))))


def get(db: Database, generation_id: int) -> GenerationRow | None:
    """Every column of one row, or None."""
    from imagen4ctl.db.models import Generation

    with db.session() as session:
        row = session.get(Generation, generation_id)
        return from_orm(COLUMNS, row) if row is not None else None


# --------------------------------------------------------------------------- claims


def change_claimed(db: Database, generation_id: int, *, expected: str, owner: str,
                   **values: Any) -> bool:
    """A committed change, only if the row still has the `expected` status and `owner` holds
    it."""
    from sqlalchemy import and_, update

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    values.setdefault("updated_at", utcnow())
    if values.get("status") in (COMPLETED, FAILED):  # a finished row is held by nobody, at once
        values.update(claimed_by=None, claimed_at=None)
    with db.session() as session:
        result = session.execute(
            update(g).where(and_(g.id == generation_id, g.status == expected,
                                 g.claimed_by == owner)).values(**values)
        )
        session.commit()
        return bool(getattr(result, "rowcount", 0))


def delete_claimed(db: Database, generation_id: int, *, expected: str, owner: str) -> bool:
    """Delete the row, committed, only if it still has the `expected` status and `owner`
    holds it."""
    from sqlalchemy import delete

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    with db.session() as session:
        result = session.execute(delete(g).where(g.id == generation_id, g.status == expected,
                                                 g.claimed_by == owner))
        session.commit()
        return bool(getattr(result, "rowcount", 0))


def restore_rows(db: Database, rows: Sequence[dict[str, Any]]) -> tuple[int, list[int]]:
    """Insert backed-up rows (every column, the id included), skipping ids that exist;
    PostgreSQL's id sequence then continues after the largest id."""
    from sqlalchemy import insert, select, text

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    restored, skipped = 0, []
    with db.session() as session:
        existing = set(session.scalars(select(g.id).where(g.id.in_([r["id"] for r in rows]))))
        for row in rows:
            if row["id"] in existing:
                skipped.append(row["id"])
                continue
            session.execute(insert(g), [row])
            restored += 1
        session.commit()
        if not db.is_sqlite and restored:
            session.execute(text("SELECT setval(pg_get_serial_sequence('generations', 'id'), "
                                 "GREATEST((SELECT max(id) FROM generations), 1))"))
            session.commit()
    return restored, skipped
