"""Shared pieces for graders: a sandboxed child process that serves calls to one function,
the binary protocol it speaks, and output checks. Future labs reuse them as they are."""
