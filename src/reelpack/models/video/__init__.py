"""Video items: frame embeddings + a title embedding -> one item embedding for the two-tower model.

Data side (this module's public surface so far):

* :class:`VideoCatalog` -- per-video frame embeddings float32 [n_items, n_frames, d_frame]
  (zero-padded; ``n_frames`` valid frames per video, 0 allowed), titles and title
  embeddings aligned to the frame space;
* :func:`synthetic_video_catalog` -- a SYNTHETIC catalog with planted signal frames,
  distractor frames (generic intro/logo frames, cut-aways to other clusters, noise) and
  optionally wrong / missing titles, built on :func:`reelpack.data.synthetic_interactions`;
* :func:`load_video_catalog` -- frames from .npy or Parquet, titles from text or .npy;
* :class:`HashingTitleEncoder` -- the offline "small sentence encoder" (scikit-learn
  HashingVectorizer + a seeded Gaussian projection), and :func:`align_titles` /
  :class:`TitleAlignment` -- the ridge map from title space to frame space (a stand-in
  for a shared text-image model such as CLIP).

Frame and title encoders are frozen: every array here is precomputed once and cached.
"""

from reelpack.models.video.data import VideoCatalog, load_video_catalog, synthetic_video_catalog
from reelpack.models.video.text import HashingTitleEncoder, TitleAlignment, align_titles

__all__ = [
    "VideoCatalog",
    "synthetic_video_catalog",
    "load_video_catalog",
    "HashingTitleEncoder",
    "TitleAlignment",
    "align_titles",
]

# The Compressed Video Aggregator, its baselines, and joint training with the two-tower user tower.
from reelpack.models.video.aggregator import (  # noqa: E402
    FullAttention,
    MeanPool,
    VideoAggregator,
    calibrate_title_threshold,
    check_video_inputs,
)
from reelpack.models.video.train import VideoTrainConfig, VideoTrainResult, train_isolated, train_video_two_tower  # noqa: E402

__all__ += [
    "VideoAggregator", "MeanPool", "FullAttention", "calibrate_title_threshold", "check_video_inputs",
    "VideoTrainConfig", "VideoTrainResult", "train_video_two_tower", "train_isolated",
]  # fmt: skip
