"""Switch integrations Gate ships: the Kamailio config (package data) and its renderer.

Imports only the standard library; nothing here runs inside the service.
"""
