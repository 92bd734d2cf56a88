"""The wallet: balance view, top-ups, refunds, adjustments, settings and the payment providers.

May import `gate.store`, `gate.history`, `gate.tenancy` and the top-level helpers; never aiohttp.
"""
