"""Tasks, shock generators, schedules and the shipped scenario files.

Installed as ``ulora_remote.scenarios``.
"""
