"""reelpack: compress recommender embeddings into small packs that phones can score locally."""

__version__ = "0.1.0"
