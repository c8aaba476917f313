"""The image bot after its fix, as the demo replays it: it inserts the row PENDING with only the
contract's columns and calls nothing; `imagen4ctl worker` does the rest (README, "The bot's
side: insert a PENDING row").

Run as `python -m imagen4ctl.demo.bot DATABASE_URL USER_ID` by `imagen4ctl demo`.
"""

from __future__ import annotations

import sys

from imagen4ctl.db import generations
from imagen4ctl.db.session import Database

PROMPT = "A lighthouse at dawn"


def main(database_url: str, user_id: str) -> int:
    database = Database(database_url)
    row_id = generations.insert(database, generations.NewGeneration(
        user_id, "imagen4", PROMPT, "16:9"))  # status PENDING, everything else left empty
    database.dispose()
    print(f"bot: generation {row_id} written PENDING ({PROMPT!r}, 16:9); nothing sent to fal")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
