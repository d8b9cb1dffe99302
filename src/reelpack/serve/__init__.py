"""Serving: the versioned catalog store and offline build, the HTTP pack service, server-side ANN, a phone-like client.

Submodules (imports point one way: ``serve`` uses ``eval``/``train``/``format``/``score``/``codecs``):

* :mod:`reelpack.serve.store`: :class:`CatalogStore` and :func:`build_catalog` (``reelpack build-catalog``).
* :mod:`reelpack.serve.ann`: the HNSW index (usearch) the service answers online users with.
* :mod:`reelpack.serve.app`: the FastAPI service (``reelpack serve``).
* :mod:`reelpack.serve.client`: :class:`PhoneClient` and the network shaper (``reelpack client``).
* :mod:`reelpack.serve.loadtest`: loopback load and fault tests.
"""
