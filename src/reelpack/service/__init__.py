"""The HTTP pack service (FastAPI, the ``[serve]`` extra): :func:`reelpack.service.app.create_app` serves a
catalog store's packs (ranges, deltas), refinement codes, HNSW retrieval and edge summaries
(``reelpack serve``; docs/SERVING.md)."""
