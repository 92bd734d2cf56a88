"""Gate: a real-time prepaid balance gate for live calls."""

# What changed in each version, for users: CHANGELOG.md. Raised on purpose, with the changelog.
__version__ = "0.2.0"
