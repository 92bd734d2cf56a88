"""Getting events out: the event stream's rendering, the signed webhook outbox, where webhooks
may go (destinations), and the one reader that wakes a process's event streams (fanout).

May import `gate.store` and the top-level helpers; never aiohttp's server side.
"""
