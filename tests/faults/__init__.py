"""Fault injection: each test does the bad thing for real and asserts one clear line, nothing lost, nothing left behind."""
