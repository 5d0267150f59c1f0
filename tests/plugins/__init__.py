"""Shared pytest fixtures, registered once for the whole suite by tests/conftest.py (``pytest_plugins``).

Session fixtures start nothing until a test asks for them: the corpus is generated on first use, the broker
is started on first use.
"""
