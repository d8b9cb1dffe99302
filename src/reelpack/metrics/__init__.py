"""Ranking quality: Recall@K, NDCG@K, MRR over ranked lists (:mod:`reelpack.metrics.quality`), ranking every
test user of a split with any score function (:mod:`reelpack.metrics.ranking`), and rate-distortion
references (:mod:`reelpack.metrics.ratedistortion`)."""

from reelpack.metrics.quality import hit_matrix, ranking_metrics, relative, topk_overlap
from reelpack.metrics.ranking import dense_score_fn, evaluate_scores, rank_users

__all__ = ["ranking_metrics", "hit_matrix", "relative", "topk_overlap", "rank_users", "evaluate_scores", "dense_score_fn"]
