"""CLIP and other text/image encoders: model loading (``models``), templated text embeddings
(``text``), their SQLite cache (``cache``), and the sentence-transformers similarity models (``sentence``).

torch and open_clip are imported inside the functions that need them, so importing this package is cheap.
"""
