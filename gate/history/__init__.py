"""The ledger as history: rows, filters, pages, CSV export, and the invariant check.

May import `gate.store`, `gate.calls.rating` and the top-level helpers; never aiohttp.
"""
