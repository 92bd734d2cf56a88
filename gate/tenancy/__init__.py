"""Who is who: organizations, workspaces, API keys (expiry, revocation), roles, the
authenticator, and the per-key rate limits.

May import `gate.store` and the top-level helpers; never aiohttp.
"""
