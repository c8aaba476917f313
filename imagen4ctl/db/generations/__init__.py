"""Every statement on the `generations` table, and the one row type they return.

Services ask in words and hold no SQL: `insert_many`, `change_state`, `claim`, `stream_stuck`,
`claim_queued`, `Report(...).counts_by_kind_and_status()`. Three paths lead in, all from here:

- `plain`: plain SQL on the driver's own connections, for what must not wait for
  SQLAlchemy's import (the `user-images` report, a fix-pending dry run, the generation
  service's state changes);
- `orm`: SQLAlchemy sessions, for the commands that load the ORM anyway;
- `claims`: who holds a row (the worker fleet's claims and fix-pending's), and the fleet's
  count of requests at fal (plain SQL too).

Whichever path read it, a row comes back as a `GenerationRow`.
"""

from imagen4ctl.db.generations.claims import (
    QUEUED,
    claim,
    claim_owners,
    claim_queued,
    in_flight,
    mark_answered,
    release,
    release_rows,
    renew,
    unattended,
)
from imagen4ctl.db.generations.orm import (
    bounded_counts,
    change_claimed,
    completed_rows,
    count_stuck,
    counts_by_status,
    delete_claimed,
    failed_rows,
    get,
    latency_quantiles,
    latency_total,
    outcomes_since,
    restore_rows,
    result_urls_of,
    stream_completed,
    stuck_count_and_oldest,
    stuck_rows,
)
from imagen4ctl.db.generations.plain import (
    UPDATABLE,
    Report,
    Statements,
    change_state,
    in_flight_with_request,
    insert,
    insert_many,
    insert_new,
    lock_key,
    record_submission,
    stream_stuck,
    taken_pairs,
)
from imagen4ctl.db.generations.rows import COLUMNS, TIMES, GenerationRow, NewGeneration

__all__ = [
    "COLUMNS", "QUEUED", "TIMES", "UPDATABLE", "GenerationRow", "NewGeneration", "Report",
    "Statements",
    "bounded_counts", "change_claimed", "change_state", "claim", "claim_owners", "claim_queued",
    "completed_rows", "count_stuck", "counts_by_status", "delete_claimed", "failed_rows", "get",
    "in_flight", "in_flight_with_request", "insert", "insert_many", "insert_new",
    "latency_quantiles", "latency_total", "lock_key", "mark_answered", "outcomes_since",
    "record_submission", "release", "release_rows", "renew", "restore_rows", "result_urls_of",
    "stream_completed", "stream_stuck", "stuck_count_and_oldest", "stuck_rows", "taken_pairs",
    "unattended",
]
