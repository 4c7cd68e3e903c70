"""Sinks: pure functions from events to bytes or objects for one wire format each."""
