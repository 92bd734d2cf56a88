"""Live calls: rating, the call scripts' wrappers (start, answer, heartbeat, end, sync), the ticker.

May import `gate.store`, `gate.tenancy` and the top-level helpers; never aiohttp.
"""
