"""One core function per command: each takes a store (and an embedder where it needs one), does the
work, and returns a result object with a JSON form. The CLI and ``serve`` call these; nothing here imports typer.
"""
