"""The ledger as history: rows, filters, pages, CSV export, and the invariant check.

Also the SQL archive that keeps Redis bounded (`schema`, `archive`, `archiver`, Alembic
`migrations`), the query-string rules shared by the API and the CLI (`query`), answers to
replays from the archive (`replay`) and spending alerts computed from it (`alerts`).

May import `gate.store`, `gate.calls.rating`, `gate.context` and the top-level helpers;
never aiohttp.
"""
