"""The grading worker: a job (JSON) in, a report (JSON) out.

Plain Python with no Django import, because this package is all that a GPU node installs.
"""
