"""Ali-CCP (Alibaba click and conversion prediction) with the scenario column `301` as the domain.

Expected form: CSV files whose names contain `train`, `val` and `test` (e.g. `ali_ccp_train.csv`),
with labels `click` and `purchase`, the scenario id in `301`, categorical feature columns named by
their field ids (`101`, `121`, ..., `109_14`, ...) and dense columns prefixed with `D` (`D109_14`, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Union

from .loading import MultiDomainData, SplitSpec, load_multidomain
from .sources import read_files

DOMAIN_COLUMN = "301"
LABELS = ("click", "purchase")


def load_ali_ccp(
    path: Union[str, os.PathLike],
    label: Literal["click", "purchase"] = "click",
    *,
    file_glob: str = "*{split}*.csv*",
    split: SplitSpec = None,
    seed: int = 0,
    embedding_dim: int = 8,
) -> MultiDomainData:
    """Ali-CCP with its provided train / validation / test files.

    Args:
        path: the folder holding the three CSV files.
        label: `"click"` (CTR) or `"purchase"` (conversion).
        file_glob: file name pattern in `path`, `{split}` standing for train, val and test.
        split: None keeps the provided files; fractions re-split all rows per domain.
        seed: seed of a re-split.
        embedding_dim: embedding width in the feature spec.

    Returns:
        A `MultiDomainData` whose domains are the scenario ids.

    Raises:
        ValueError: an unknown label.
        FileNotFoundError: a split file is missing.

    Example:
        >>> data = load_ali_ccp("../shared/data/samples", file_glob="ali_ccp_{split}_sample.csv")  # doctest: +SKIP
        >>> data.splits["train"].num_rows  # doctest: +SKIP
        100
    """
    if label not in LABELS:
        raise ValueError(f"label={label!r}; Ali-CCP has {LABELS}.")
    folder = Path(path)
    files = {name: sorted(folder.glob(file_glob.format(split=name))) for name in ("train", "val", "test")}
    missing = [file_glob.format(split=name) for name, found in files.items() if not found]
    if missing:
        raise FileNotFoundError(f"No Ali-CCP CSV matches {missing} in {folder}; pass file_glob to match your names.")
    tables = {name: read_files(found) for name, found in files.items()}
    columns = tables["train"].column_names
    features = [c for c in columns if c not in (*LABELS, DOMAIN_COLUMN)]
    dense = [c for c in features if c.startswith("D")]
    sparse = [c for c in features if c not in dense]
    return load_multidomain(tables, label=label, domain=DOMAIN_COLUMN, sparse=sparse, dense=dense, split=split,
                            seed=seed, embedding_dim=embedding_dim)
