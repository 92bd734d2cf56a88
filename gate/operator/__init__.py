"""The platform operator's verbs over its tenants: the holds (suspend, resume, close).

The directory that finds a workspace lives in `gate.tenancy.directory` (the wallet keeps it
current as numbers are rented).

May import `gate.store`, `gate.tenancy`, `gate.wallet`, `gate.calls`, `gate.history` and the
top-level helpers; never aiohttp.
"""
