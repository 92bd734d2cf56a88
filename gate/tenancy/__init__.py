"""Who is who: organizations, workspaces, API keys, roles and the authenticator.

May import `gate.store` and the top-level helpers; never aiohttp.
"""
