"""Who holds which row: a fix-pending run's or a worker's claim, what is in flight at fal,
and the claim of queued rows under the fleet's cap (FAL_MAX_CONCURRENT).

Plain SQL on the writer pool's connections (each pass runs a few of these; a new connection
per pass would cost more than the statements). A claim names its owner (`host:pid:uuid`) and
when it was last renewed; a dead owner is a fact only Python can check (its pid), so the
callers pass the owners they found dead, and these statements treat them as free.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from imagen4ctl.db.generations.rows import IN_FLIGHT_COLUMNS, GenerationRow, from_driver
from imagen4ctl.db.values import IN_FLIGHT_SQL, PENDING, PROCESSING
from imagen4ctl.db.writer import in_list

if TYPE_CHECKING:
    from imagen4ctl.db.session import Database
    from imagen4ctl.db.writer import Writer

_SELECTED = ", ".join(IN_FLIGHT_COLUMNS)
# Queued by the bot: nothing was ever tried with it. The worker submits these.
QUEUED = (f"status = '{PENDING}' AND fal_request_id IS NULL AND submit_started_at IS NULL "
          "AND error IS NULL")


def fleet_lock_key() -> int:
    """The advisory-lock key every worker takes to decide a submission (63 bits)."""
    digest = hashlib.sha256(b"imagen4ctl-worker:fal-max-concurrent").digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _free(dead: Sequence[str], params: dict[str, Any]) -> str:
    """A claim another may take: none, not renewed since `:stale_before`, or a dead owner's."""
    terms = ["claimed_by IS NULL", "claimed_at < :stale_before"]
    if dead:
        names, values = in_list("dead", list(dead))
        params.update(values)
        terms.append(f"claimed_by IN {names}")
    return "(" + " OR ".join(terms) + ")"


def _live_claim(dead: Sequence[str], params: dict[str, Any]) -> str:
    return f"(claimed_by IS NOT NULL AND NOT {_free(dead, params)})"


def in_flight_sql(dead: Sequence[str], params: dict[str, Any]) -> str:
    """Rows whose request is (or may be) at fal, whoever owns them, a dead worker's too:
    submitted or being submitted, or claimed to be submitted; until they end, or until fal
    has answered with their images (`completed_at` is then set, before they are stored)."""
    return (f"SELECT count(*) FROM generations WHERE {IN_FLIGHT_SQL} AND completed_at IS NULL "  # noqa: S608
            "AND (fal_request_id IS NOT NULL OR submit_started_at IS NOT NULL "
            f"OR (status = '{PENDING}' AND {_live_claim(dead, params)}))")


def claim_owners(db: Database) -> list[str]:
    """The distinct owners of claims on unfinished rows (a finished row holds no claim)."""
    with db.write() as writer:
        return [owner for (owner,) in writer.rows(
            f"SELECT DISTINCT claimed_by FROM generations WHERE {IN_FLIGHT_SQL} "  # noqa: S608
            "AND claimed_by IS NOT NULL")]


def in_flight(db: Database, *, stale_before: datetime, dead: Sequence[str] = ()) -> int:
    params: dict[str, Any] = {"stale_before": stale_before}
    with db.write() as writer:
        return int(writer.value(in_flight_sql(dead, params), **params) or 0)


def claim_queued(db: Database, *, kind: str, owner: str, now: datetime, cap: int, limit: int,
                 stale_before: datetime, dead: Sequence[str] = (),
                 created_before: datetime | None = None) -> tuple[int, list[GenerationRow]]:
    """Claim up to `limit` queued rows of `kind`, oldest first, as far as the fleet's `cap`
    allows: (requests in flight before the claim, the rows claimed). With `created_before`,
    only rows created by then.

    Counting and claiming are one decision for the whole fleet: on PostgreSQL every worker
    takes the same transaction-scoped advisory lock first, on SQLite its one writer lock. A
    claimed row counts as in flight at once, before its submission is even marked. Rows
    another transaction is claiming are skipped, not waited for (FOR UPDATE SKIP LOCKED).
    """
    params: dict[str, Any] = {"kind": kind, "owner": owner, "now": now,
                              "stale_before": stale_before}
    where = f"kind = :kind AND {QUEUED} AND {_free(dead, params)}"
    if created_before is not None:
        where += " AND created_at <= :created_before"
        params["created_before"] = created_before
    with db.write(exclusive=True) as writer:
        if not db.is_sqlite:
            writer.execute("SELECT pg_advisory_xact_lock(:key)", key=fleet_lock_key())
        busy = int(writer.value(in_flight_sql(dead, params), **params) or 0)
        room = min(limit, cap - busy)
        if room <= 0:
            return busy, []
        params["room"] = room
        lock = "" if db.is_sqlite else " FOR UPDATE SKIP LOCKED"
        rows = writer.rows(
            "UPDATE generations SET claimed_by = :owner, claimed_at = :now WHERE id IN "  # noqa: S608
            f"(SELECT id FROM generations WHERE {where} ORDER BY created_at, id "
            f"LIMIT :room{lock}) RETURNING {_SELECTED}", **params)
    claimed = [from_driver(IN_FLIGHT_COLUMNS, values) for values in rows]
    return busy, sorted(claimed, key=lambda r: (r.created_at is None, r.created_at, r.id))


def unattended(db: Database, *, kind: str, owner: str, stale_before: datetime,
               settled_before: datetime, stuck_before: datetime, dead: Sequence[str] = (),
               limit: int = 100) -> list[GenerationRow]:
    """Unfinished rows of `kind`, not queued, that no live run looks after, oldest first:

    - claimed by a worker that died (its pid is gone) or stopped renewing its claim;
    - handed over: a run stopped with the request at fal and said why (`error`);
    - a request at fal whose row has been quiet since `settled_before` (`generate --no-wait`
      left it, or a `generate` that claims nothing still waits: the caller acts only on
      fal's final answer, which that run would collect within moments);
    - stuck: unchanged since `stuck_before` (fix-pending's STUCK_AFTER).

    A possible submission (marked, no request id) waits until its mark is older than
    `settled_before`: an answer may still be on its way, and fal's Platform API lists a
    request only once it has it.
    """
    params: dict[str, Any] = {"kind": kind, "owner": owner, "stale_before": stale_before,
                              "settled_before": settled_before, "stuck_before": stuck_before,
                              "limit": limit}
    free = _free(dead, params)
    sql = (f"SELECT {_SELECTED} FROM generations WHERE kind = :kind AND {IN_FLIGHT_SQL} "  # noqa: S608
           f"AND NOT ({QUEUED}) AND (claimed_by IS NULL OR claimed_by <> :owner) AND {free} "
           "AND (fal_request_id IS NOT NULL OR submit_started_at IS NULL "
           "OR submit_started_at < :settled_before) "
           "AND (claimed_by IS NOT NULL OR updated_at < :stuck_before OR (error IS NOT NULL "
           "AND (fal_request_id IS NOT NULL OR submit_started_at IS NOT NULL)) "
           "OR (fal_request_id IS NOT NULL AND updated_at < :settled_before)) "
           "ORDER BY created_at, id LIMIT :limit")
    with db.write() as writer:
        return [from_driver(IN_FLIGHT_COLUMNS, values) for values in writer.rows(sql, **params)]


def claim(db: Database, generation_id: int, *, owner: str, status: str,
          fal_request_id: str | None, submit_marked: bool, now: datetime,
          stale_before: datetime, is_dead: Callable[[str | None], bool]) -> bool:
    """Mark the row as `owner`'s, committed, if it is still as read (`status`, request id,
    whether a submission was attempted) and no live run holds it: unclaimed, claimed before
    `stale_before`, or by an owner `is_dead` says is gone. On PostgreSQL a row another
    transaction is claiming is skipped (FOR UPDATE SKIP LOCKED), not waited for."""
    params: dict[str, Any] = {"id": generation_id, "owner": owner, "status": status,
                              "now": now, "stale_before": stale_before}
    # "As read": the fields the plan was decided on. (Not updated_at: SQLite keeps it as
    # text in whatever format its writer used, so equality is unreliable there.)
    same_request = "fal_request_id IS NULL"
    if fal_request_id is not None:
        same_request, params["request_id"] = "fal_request_id = :request_id", fal_request_id
    same_mark = f"submit_started_at IS {'NOT NULL' if submit_marked else 'NULL'}"
    lock = "" if db.is_sqlite else " FOR UPDATE SKIP LOCKED"
    # The read in a transaction of its own: in one with the write, SQLite would fail at once,
    # not wait, if another writer came between them.
    with db.write() as writer:
        current = writer.value("SELECT claimed_by FROM generations WHERE id = :id",
                               id=generation_id)
    free = _free([current] if is_dead(current) else [], params)
    with db.write() as writer:
        return writer.execute(
            "UPDATE generations SET claimed_by = :owner, claimed_at = :now WHERE id = "  # noqa: S608
            "(SELECT id FROM generations WHERE id = :id AND status = :status "
            f"AND {same_request} AND {same_mark} AND {free}{lock})", **params) > 0


def release(db: Database, generation_id: int, *, owner: str) -> None:
    """Give the row up, if `owner` still holds it."""
    release_rows(db, owner=owner, ids=[generation_id])


def renew(db: Database, *, owner: str, ids: Sequence[int], now: datetime) -> int:
    """The heartbeat: `owner`'s claims on these rows renewed; how many it still holds."""
    if not ids:
        return 0
    names, values = in_list("row", list(ids))
    with db.write() as writer:
        return writer.execute(
            f"UPDATE generations SET claimed_at = :now WHERE id IN {names} "  # noqa: S608
            "AND claimed_by = :owner", now=now, owner=owner, **values)


def release_rows(db: Database, *, owner: str, ids: Sequence[int],
                 reason: str | None = None) -> int:
    """Give these rows up, if `owner` still holds them. With `reason`, a row whose request is
    (or may be) at fal keeps it in `error`, so that the next worker takes it at once (handed
    over) instead of waiting for STUCK_AFTER. Neither is a change of state: `updated_at`
    stays."""
    if not ids:
        return 0
    names, values = in_list("row", list(ids))
    with db.write() as writer:
        if reason is not None:
            _hand_over(writer, names, values, owner, reason)
        return writer.execute(
            "UPDATE generations SET claimed_by = NULL, claimed_at = NULL "  # noqa: S608
            f"WHERE id IN {names} AND claimed_by = :owner", owner=owner, **values)


def _hand_over(writer: Writer, names: str, values: dict[str, Any], owner: str,
               reason: str) -> None:
    writer.execute(
        f"UPDATE generations SET error = :reason WHERE id IN {names} "  # noqa: S608
        f"AND claimed_by = :owner AND {IN_FLIGHT_SQL} "
        "AND (fal_request_id IS NOT NULL OR submit_started_at IS NOT NULL)",
        reason=reason, owner=owner, **values)


def mark_answered(db: Database, generation_id: int, *, owner: str, now: datetime) -> bool:
    """fal has answered the request with its images: it no longer counts against the cap,
    while they are stored. `completed_at` is set again when the row is COMPLETED."""
    with db.write() as writer:
        return writer.execute(
            "UPDATE generations SET completed_at = :now WHERE id = :id "  # noqa: S608
            f"AND status = '{PROCESSING}' AND claimed_by = :owner AND completed_at IS NULL",
            now=now, id=generation_id, owner=owner) > 0
