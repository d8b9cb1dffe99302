"""Serving: the versioned catalog store and offline build, the HTTP pack service, server-side ANN, a phone-like client.

Submodules (imports point one way: ``serve`` uses ``eval``/``train``/``format``/``score``/``codecs``):

* :mod:`reelpack.serve.store`: :class:`CatalogStore` and :func:`build_catalog` (``reelpack build-catalog``).
* :mod:`reelpack.serve.ann`: the HNSW index (usearch) the service answers online users with.
* :mod:`reelpack.serve.app`: the FastAPI service (``reelpack serve``).
* :mod:`reelpack.serve.client`: :class:`PhoneClient` and the network shaper (``reelpack client``).
* :mod:`reelpack.serve.loadtest`: loopback load and fault tests.
* :mod:`reelpack.serve.scale`: :func:`build_catalog_sharded`, the resumable sharded build on Dask
  (``reelpack build-catalog --scheduler``; docs/SCALE.md).
* :mod:`reelpack.serve.edge`: the hierarchical index: a device summary (coarse centroids + the codes of the
  clusters nearest the user), the local-vs-cloud decision and the merge (:class:`EdgeRetriever`).
"""
