"""Connection arguments of the stack's Airflow metadatabase (SQLite); Airflow imports them.

SQLite lets one writer in at a time, and four Airflow components plus every task process write.
Under a full scenario suite the default 5 s busy timeout let an api-server INSERT give up
("Database error", HTTP 500 on triggering a run); 30 s waits for the writer ahead instead.
"""

from __future__ import annotations

SQLITE_CONNECT_ARGS = {"timeout": 30}
