"""Redis: the client factory and its availability circuit, key names, the Lua script registry,
due indexes, private servers.

Imports nothing of Gate's but the top-level helpers (`gate.metrics`, `gate.errors`).
"""
