"""Shared set-up of the re-ranker tests: a synthetic world (split, embeddings, fitted codec, codes) and the
candidate batches its users get."""

from __future__ import annotations

import numpy as np
import pytest

from reelpack.codecs import make_codec
from reelpack.data import synthetic_interactions, train_test_split
from reelpack.models.rerank import candidate_lists, make_batch, quantise_popularity, user_history


def _embedding_world(n_users: int, n_items: int, seed: int, dim: int):
    """(split, items, users, codec, codes): a synthetic split (interactions from ``seed``), unit-norm item
    embeddings [n_items, dim], users = sum of their train items plus noise, a pq4 codec fitted on the items and
    the items' codes."""
    split = train_test_split(synthetic_interactions(n_users=n_users, n_items=n_items, seed=seed), seed=0)
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(split.n_items, dim)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    users = np.zeros((split.n_users, dim), np.float32)
    u_of, i_of = split.train_pairs()
    np.add.at(users, u_of, items[i_of])
    users += 0.1 * rng.normal(size=users.shape).astype(np.float32)
    codec = make_codec("pq4").fit(items, seed=0)
    codes = codec.encode(items)
    return split, items, users, codec, codes


def _rerank_batch(world, users_idx, r: int, pop: bool = True, hist: bool = True):
    """(CandidateBatch, candidates [n, r]) for ``users_idx`` of ``world`` (split, items, users, codec, codes, rr, ...):
    the codec's top-``r`` candidates, with popularity bytes and history (window ``rr.recent_window``) unless
    ``pop`` / ``hist`` is False."""
    split, _, users, codec, codes, rr = world[:6]
    q = users[users_idx]
    cand, _ = candidate_lists(q @ codec.decode(codes).T, split, users_idx, r)
    pop_bytes = quantise_popularity(split.item_counts)[0] if pop else None
    history, valid = user_history(split, users_idx, rr.recent_window) if hist else (None, None)
    return make_batch(q, codes, cand, pop_bytes, history, valid), cand


@pytest.fixture(scope="session")
def embedding_world():
    """The factory ``embedding_world(n_users, n_items, seed, dim)`` (see :func:`_embedding_world`)."""
    return _embedding_world


@pytest.fixture(scope="session")
def rerank_batch():
    """The helper ``rerank_batch(world, users_idx, r, pop=True, hist=True)`` (see :func:`_rerank_batch`)."""
    return _rerank_batch
