"""Operator routes: replay (whole deployment) and dead-letter counters."""
