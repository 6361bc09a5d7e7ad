"""Where descriptions come from: curated files (``curated``) and LLMs.

Submodules are imported directly (``from kbuild.sources.curated import load_curated``) so that
reading a JSON file never pulls in an LLM client.
"""
