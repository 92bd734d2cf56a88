"""Getting events out: the event stream's rendering and the signed webhook outbox.

May import `gate.store` and the top-level helpers; never aiohttp's server side.
"""
