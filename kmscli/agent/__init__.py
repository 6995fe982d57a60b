"""The session agent behind ``kmscli unlock``: a warm process holding one vault key.

Nothing is imported here: the thin client in ``kmscli.cli.main`` imports
``kmscli.agent.client`` on every call with a session and must stay cheap.
See docs/session.md for the design and the threat model.
"""
