"""Loopback stand-ins for remote APIs (real HTTP servers on 127.0.0.1, started by the tests)."""
