"""The billing page: static HTML, CSS and ES modules served at /billing, and their handlers.

Everything the page shows it reads from Gate's public API with the key a person pastes, so
anything the page can do an API client can do too. Imports gate.errors only: no domain code.
"""
