"""The image bot before its fix, as the demo replays it: it writes the row PENDING, then
calls fal_client with only FAL_API_KEY set. fal_client finds no FAL_KEY, the submission
fails, and nothing ever moves the row on.

Run as `python -m imagen4ctl.demo.naive_bot DATABASE_URL USER_ID` by `imagen4ctl demo`.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

from imagen4ctl.db import generations
from imagen4ctl.db.session import Database
from imagen4ctl.db.values import PENDING, PROCESSING

# When the five attempts happened, relative to now: 30 minutes to 33 hours 4 minutes ago.
ATTEMPTS = (
    ("A neon city at night", timedelta(minutes=30)),
    ("A lighthouse in a storm", timedelta(hours=2, minutes=15)),
    ("A fox in the snow", timedelta(hours=8)),
    ("Autumn forest path", timedelta(hours=20, minutes=40)),
    ("Portrait of a robot", timedelta(hours=33, minutes=4)),
)


def main(database_url: str, user_id: str) -> int:
    import fal_client

    database = Database(database_url)
    failures = 0
    for prompt, age in ATTEMPTS:
        when = datetime.now(UTC) - age
        row_id = generations.insert(database, generations.NewGeneration(
            user_id, "imagen4", prompt, "1:1", status=PENDING, at=when))
        try:
            fal_client.submit("fal-ai/imagen4/preview", arguments={"prompt": prompt})
        except fal_client.auth.MissingCredentialsError as e:
            failures += 1
            print(f"bot: generation {row_id} written PENDING; fal_client: {e}")
            continue  # the bug: the row stays PENDING for ever
        # never reached in the incident
        generations.change_state(database, row_id, [PENDING], status=PROCESSING)
    database.dispose()
    return 0 if failures == len(ATTEMPTS) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
