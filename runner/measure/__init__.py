"""Measurement: robust statistics and an interleaved timing loop, shared by every grader."""
