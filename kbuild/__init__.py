"""kbuild: versioned knowledge bases of visual class descriptions, stored in ChromaDB."""

__version__ = "0.1.0"
