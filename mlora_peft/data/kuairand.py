"""KuaiRand (Kuaishou short-video logs) with the exposure tab `tab` as the domain.

Features: user and video ids and the categorical user fields as sparse features; follower,
fan and friend counts, registration days, duration and video size as dense ones. Play time and
stay times are left out: they are measured after the click and would leak the label.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Union

from .loading import MultiDomainData, SplitSpec, load_multidomain
from .sources import read_files
from .splits import DEFAULT_FRACTIONS

SPARSE = ("user_id", "video_id", "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
          "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range",
          *(f"onehot_feat{i}" for i in range(18)), "video_type", "visible_status")
DENSE = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days", "duration_ms", "server_width",
         "server_height")
LEAKY = ("play_time_ms", "profile_stay_time", "comment_stay_time")


def load_kuairand(
    path: Union[str, os.PathLike, Sequence],
    label: str = "is_click",
    *,
    split: SplitSpec = DEFAULT_FRACTIONS,
    seed: int = 0,
    embedding_dim: int = 8,
) -> MultiDomainData:
    """KuaiRand from CSV file(s) holding logs joined with user and video features.

    Args:
        path: CSV file(s) (`.gz` too).
        label: a 0/1 column such as `"is_click"` or `"is_like"`.
        split: per-domain stratified fractions, or a `TimeSplit` (e.g. on `time_ms`).
        seed: split seed.
        embedding_dim: embedding width in the feature spec.

    Returns:
        A `MultiDomainData` whose domains are the tab ids (the features present in the file are used).

    Example:
        >>> data = load_kuairand("../shared/data/samples/kuairand_sample.csv")  # doctest: +SKIP
        >>> data.domain_names  # doctest: +SKIP
        ('1',)
    """
    table = read_files(path)
    present = set(table.column_names)
    return load_multidomain(table, label=label, domain="tab", sparse=[c for c in SPARSE if c in present],
                            dense=[c for c in DENSE if c in present], split=split, seed=seed,
                            embedding_dim=embedding_dim)
