"""Benchmarks, run by `python -m bot bench ...`. They print figures; nothing here asserts speed."""
