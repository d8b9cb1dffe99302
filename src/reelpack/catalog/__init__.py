"""Offline catalog builds into a versioned store.

* :mod:`reelpack.catalog.store`: :class:`~reelpack.catalog.store.CatalogStore`: names, manifest, lock, staging and
  publishing, reads and deletions of catalog versions.
* :mod:`reelpack.catalog.build`: the two front ends, :func:`~reelpack.catalog.build.build_catalog` (in this
  process, ``reelpack build-catalog``) and :func:`~reelpack.catalog.build.build_catalog_sharded` (Dask workers,
  resumable, ``--scheduler``; the ``[scale]`` extra; docs/SCALE.md).
* :mod:`reelpack.catalog.pipeline`: the one build pipeline both run (plan, fit on a sample, encode block by block,
  assemble the packs or deltas, arrays, index, edge, publish).
* :mod:`reelpack.catalog.executor`: where the encode tasks run (this process, or a Dask cluster).
* :mod:`reelpack.catalog.shards`: the encode task and the resumable shard files.
* :mod:`reelpack.catalog.sources`: the rows of a catalog (in memory, ``.npy`` memory map, synthetic) and
  :func:`~reelpack.catalog.sources.load_embeddings`.
* :mod:`reelpack.catalog.ann`: the HNSW index (usearch, the ``[serve]`` extra) built with each version.
* :mod:`reelpack.catalog.edge`: the hierarchical index built with each version and the device summary
  cut from it (the device's decision rule is :mod:`reelpack.device.edge`).

Nothing here imports Dask or usearch until a build asks for them.
"""
