"""HTTP: the route table, the handlers and their plumbing (auth, JSON, errors, OpenAPI).

Handlers parse and validate, call one domain method and serialize; they may import every other
subpackage, and nothing outside `gate.api` (but `gate.app`) imports them.
"""
