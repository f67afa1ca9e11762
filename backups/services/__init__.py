"""Workflows that touch several models or the engine; commands, tasks and views call these."""
