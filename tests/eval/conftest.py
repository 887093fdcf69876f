"""Fixtures of the eval tests: ``colour`` (the stand-in technique) lives in tests/conftest.py,
shared with the fault-injection suite."""
