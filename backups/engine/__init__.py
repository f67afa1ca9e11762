"""The backup engine: plain Python, no Django.

It reads sources, writes and hashes archives, builds manifests, restores and verifies.
Everything a user-facing layer needs comes through `hooks.Hooks` (progress, cancellation,
and the fenced publish step); everything that goes wrong is an `errors.EngineError`
with a message a user can act on.
"""
