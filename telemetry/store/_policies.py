"""TimescaleDB's background policies on `positions` and `positions_1m`, checked against settings.

The migrations create them; this module notices when one is missing or its interval no longer
matches the retention setting (the operator changed it) and puts the right one in place.
"""

from __future__ import annotations

from psycopg import AsyncCursor

# The policies the schema relies on: (what, the SQL that says whether the one in place is
# right, the SQL that replaces it). %(retention_days)s / %(recent_days)s come from settings.
_POLICIES: list[tuple[str, str, str]] = [
    (
        "retention policy on positions",
        """SELECT count(*) FROM timescaledb_information.jobs
           WHERE proc_name = 'policy_retention' AND hypertable_name = 'positions'
             AND hypertable_schema = current_schema()
             AND (config->>'drop_after')::interval = make_interval(days => %(retention_days)s)""",
        """SELECT remove_retention_policy('positions', if_exists => true);
           SELECT add_retention_policy('positions', make_interval(days => %(retention_days)s))""",
    ),
    (
        "compression policy on positions",
        """SELECT count(*) FROM timescaledb_information.jobs
           WHERE proc_name = 'policy_compression' AND hypertable_name = 'positions'
             AND hypertable_schema = current_schema()
             AND (config->>'compress_after')::interval = make_interval(days => %(recent_days)s)""",
        """SELECT remove_compression_policy('positions', if_exists => true);
           SELECT add_compression_policy('positions', make_interval(days => %(recent_days)s))""",
    ),
    (
        "refresh policy on positions_1m",
        # Jobs name the aggregate itself (2.28) or its materialisation hypertable (older).
        """SELECT count(*) FROM timescaledb_information.jobs j
           JOIN timescaledb_information.continuous_aggregates c
             ON (c.view_schema, c.view_name) = (j.hypertable_schema, j.hypertable_name)
             OR (c.materialization_hypertable_schema, c.materialization_hypertable_name)
                = (j.hypertable_schema, j.hypertable_name)
           WHERE j.proc_name = 'policy_refresh_continuous_aggregate'
             AND c.view_name = 'positions_1m' AND c.view_schema = current_schema()
             AND (j.config->>'start_offset')::interval = make_interval(days => %(recent_days)s)""",
        """SELECT remove_continuous_aggregate_policy('positions_1m', if_exists => true);
           SELECT add_continuous_aggregate_policy('positions_1m',
               start_offset => make_interval(days => %(recent_days)s),
               end_offset => INTERVAL '1 minute',
               schedule_interval => INTERVAL '1 minute')""",
    ),
]


def recent_days(retention_days: int) -> int:
    """Days kept uncompressed (and re-aggregated for late uploads): a week, within retention."""
    return min(7, max(1, retention_days // 2))


async def out_of_line(cur: AsyncCursor, retention_days: int) -> list[str]:
    """Which policies are missing or have the wrong interval (one cheap query each)."""
    params = {"retention_days": retention_days, "recent_days": recent_days(retention_days)}
    wrong = []
    for what, check, _ in _POLICIES:
        await cur.execute(check, params)
        if (await cur.fetchone())[0] != 1:
            wrong.append(what)
    return wrong


async def put_in_line(cur: AsyncCursor, retention_days: int, wrong: list[str]) -> None:
    """Replace the given policies with ones matching the settings (caller holds the lock)."""
    params = {"retention_days": retention_days, "recent_days": recent_days(retention_days)}
    for what, _, replace in _POLICIES:
        if what in wrong:
            for statement in replace.split(";"):
                await cur.execute(statement, params)


# TimescaleDB jobs whose last run failed, with their newest error. The policies above can exist
# and still not work (on PostgreSQL 15.20 with TimescaleDB 2.28.3 every background run ends in
# "cannot drop portal" after doing its work); operators must see that.
_FAILING = """
SELECT j.job_id, j.proc_name, coalesce(j.hypertable_name, ''),
       (SELECT e.err_message FROM timescaledb_information.job_errors e
        WHERE e.job_id = j.job_id ORDER BY e.finish_time DESC LIMIT 1)
FROM timescaledb_information.jobs j
JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
WHERE s.last_run_status = 'Failed'
ORDER BY j.job_id"""


async def failing_jobs(cur: AsyncCursor) -> list[str]:
    """'job <id> <proc> on <table>: <error>' for each job whose last run failed."""
    await cur.execute(_FAILING)
    return [
        f"job {job} {proc}" + (f" on {table}" if table else "") + f": {error or 'failed'}"
        for job, proc, table, error in await cur.fetchall()
    ]
