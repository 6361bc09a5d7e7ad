"""Pruning as pure functions on arrays: text clean-up (``text``), similarity search (``similarity``),
the embedding-based stages (``stages``) and the pipeline that runs them in order (``core``).

Nothing here touches the store or a model; ``kbuild.ops.prune`` feeds it embeddings and publishes the result.
"""
