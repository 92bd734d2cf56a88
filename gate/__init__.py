"""Gate: a real-time prepaid balance gate for live calls."""

__version__ = "0.1.0"
