"""MovieLens-100K and -1M with users' gender, age or occupation as the domain (GroupLens files).

ML-100K: `u.data` (tab-separated `user item rating timestamp`), `u.user` (`user|age|gender|
occupation|zip`), `u.item` (latin-1, `item|title|release|video release|url|19 genre flags`).
ML-1M: `ratings.dat` (`UserID::MovieID::Rating::Timestamp`), `users.dat`
(`UserID::Gender::Age::Occupation::Zip`, age and occupation as codes) and `movies.dat`
(`MovieID::Title::Genres`). Ages are bucketed to ML-1M's seven groups for both versions.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from .download import cache_path, fetch_zip
from .loading import MultiDomainData, SplitSpec, load_multidomain
from .splits import DEFAULT_FRACTIONS

MOVIELENS_URLS = {
    "100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
}
_FILES = {"100k": ("u.data", "u.user", "u.item"), "1m": ("ratings.dat", "users.dat", "movies.dat")}
AGE_GROUPS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
_AGE_STARTS = (18, 25, 35, 45, 50, 56)  # lower bounds of groups 1..6 (ML-1M's age codes 1, 18, ..., 56)
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
SIDE_FEATURES = ("gender", "age", "occupation", "zip", "genre")
GENRE_GROUPS = {
    "action": ("Action", "Adventure", "Sci-Fi", "Fantasy", "War", "Western"),
    "comedy": ("Comedy", "Animation", "Children's", "Musical"),
    "drama": ("Drama", "Romance"),
    "thriller": ("Thriller", "Crime", "Horror", "Mystery", "Film-Noir"),
    "other": ("Documentary", "unknown"),
}
"""Item-side domains: the group of a movie's first listed genre (`domain="genre_group"`)."""
DOMAINS = ("gender", "age", "occupation", "genre_group")


def load_movielens(
    path: Optional[Union[str, os.PathLike]] = None,
    version: Literal["100k", "1m"] = "100k",
    domain: Literal["gender", "age", "occupation", "genre_group"] = "gender",
    label: str = "rating==5",
    seed: int = 0,
    split: SplitSpec = DEFAULT_FRACTIONS,
    *,
    side_features: bool = False,
    download: bool = False,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    url: Optional[str] = None,
    embedding_dim: int = 8,
) -> MultiDomainData:
    """MovieLens as a multi-domain CTR data set (the MLoRA protocol by default).

    Args:
        path: the folder holding the version's files (e.g. `.../ml-100k`). None: the cache folder
            (`<cache_dir>/ml-<version>`).
        version: `"100k"` or `"1m"`.
        domain: what defines domains: a user attribute, `"gender"` (2), `"age"` (7 groups, youngest
            first) or `"occupation"` (21), or the item side, `"genre_group"` (5 groups of the movie's
            first listed genre, see `GENRE_GROUPS`).
        label: a rule on `rating`: `"rating==5"` (MLoRA) or `"rating>3"` (Scenario-Wise-Rec).
        seed: split seed.
        split: fractions for a per-domain stratified split, or `TimeSplit("timestamp")`.
        side_features: add the user's gender, age group, occupation, zip code and the item's first
            genre as sparse features (the domain's own column is left out); default user and item ids only.
        download: when the files are missing, fetch the GroupLens zip and extract it into the folder.
        cache_dir: cache folder (default `~/.cache/mlora_peft/movielens`).
        url: archive URL (default: GroupLens's for the version).
        embedding_dim: embedding width in the feature spec.

    Returns:
        A `MultiDomainData` (one row per rating).

    Raises:
        ValueError: an unknown version or domain.
        FileNotFoundError: missing files and `download=False`.

    Example:
        >>> data = load_movielens("../shared/data/ml-100k", domain="gender")  # doctest: +SKIP
        >>> data.domain_names  # doctest: +SKIP
        ('F', 'M')
    """
    if version not in _FILES:
        raise ValueError(f"version={version!r}; use one of {sorted(_FILES)}.")
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r}; use one of {list(DOMAINS)}.")
    folder = _locate(path, version, download, cache_dir, url)
    table = read_movielens(folder, version)
    order = _domain_order(table.column(domain), domain, version)
    sparse = ["user", "item"] + ([f for f in SIDE_FEATURES if f != domain] if side_features else [])
    return load_multidomain(table, label=label, domain=domain, sparse=sparse, dense=[], split=split, seed=seed,
                            domain_order=order, embedding_dim=embedding_dim)


def read_movielens(folder: Union[str, os.PathLike], version: Literal["100k", "1m"] = "100k") -> pa.Table:
    """One row per rating: user, item, rating, timestamp, gender, age (group), occupation, zip, genre, genre_group.

    Args:
        folder: the folder holding the version's files.
        version: `"100k"` or `"1m"`.

    Returns:
        A pyarrow Table in the rating file's order.

    Raises:
        FileNotFoundError: a missing file.

    Example:
        >>> read_movielens("../shared/data/ml-100k").num_rows  # doctest: +SKIP
        100000
    """
    folder = Path(folder)
    for name in _FILES[version]:
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} is missing; pass the MovieLens-{version} folder, or download=True."
            )
    if version == "100k":
        ratings = _read(folder / "u.data", "\t", ["user", "item", "rating", "timestamp"])
        users = _read(folder / "u.user", "|", ["user", "age", "gender", "occupation", "zip"])
        items = _read_items_100k(folder / "u.item")
    else:
        ratings = _read(folder / "ratings.dat", "::", ["user", "item", "rating", "timestamp"])
        users = _read(folder / "users.dat", "::", ["user", "gender", "age", "occupation", "zip"])
        occupation = pa.array(ML1M_OCCUPATIONS).take(users.column("occupation"))
        users = users.set_column(users.schema.get_field_index("occupation"), "occupation", occupation)
        movies = _read(folder / "movies.dat", "::", ["item", "title", "genres"], encoding="latin1")
        genre = pc.list_element(pc.split_pattern(movies.column("genres"), "|"), 0)
        items = pa.table({"item": movies.column("item"), "genre": genre})
    users = users.set_column(users.schema.get_field_index("age"), "age", age_groups(users.column("age")))
    users = users.set_column(users.schema.get_field_index("zip"), "zip", users.column("zip").cast(pa.string()))
    items = items.append_column("genre_group", genre_groups(items.column("genre")))
    joined = _join(ratings, "user", users, ["gender", "age", "occupation", "zip"])
    return _join(joined, "item", items, ["genre", "genre_group"])


def genre_groups(genres: Union[pa.Array, pa.ChunkedArray]) -> pa.Array:
    """Genre names -> their `GENRE_GROUPS` group (`"other"` for a genre in no group).

    Example:
        >>> genre_groups(pa.array(["Film-Noir", "Romance", "Documentary"])).to_pylist()
        ['thriller', 'drama', 'other']
    """
    group_of = {genre: group for group, members in GENRE_GROUPS.items() for genre in members}
    return pa.array([group_of.get(genre, "other") for genre in genres.to_pylist()])


def age_groups(ages: Union[pa.Array, pa.ChunkedArray]) -> pa.Array:
    """Ages in years (or ML-1M age codes) -> ML-1M's seven group names.

    Example:
        >>> age_groups(pa.array([7, 18, 24, 56, 1])).to_pylist()
        ['<18', '18-24', '18-24', '56+', '<18']
    """
    values = np.asarray(ages.to_numpy(zero_copy_only=False) if hasattr(ages, "to_numpy") else ages)
    return pa.array(np.asarray(AGE_GROUPS)[np.digitize(values, _AGE_STARTS)])


def _domain_order(column: pa.ChunkedArray, domain: str, version: str) -> Optional[list[str]]:
    """Age groups youngest first, genre groups in `GENRE_GROUPS` order and ML-1M occupations in code
    order; other domains sort by value."""
    present = set(column.unique().to_pylist())
    if domain == "age":
        return [g for g in AGE_GROUPS if g in present]
    if domain == "genre_group":
        return [g for g in GENRE_GROUPS if g in present]
    if domain == "occupation" and version == "1m":
        return [o for o in ML1M_OCCUPATIONS if o in present]
    return None


def _locate(path, version: str, download: bool, cache_dir, url: Optional[str]) -> Path:
    """The folder with the version's files, fetched first when missing and `download` is set."""
    folder = Path(path) if path is not None else cache_path(cache_dir, "movielens") / f"ml-{version}"
    if download:
        fetch_zip(url or MOVIELENS_URLS[version], folder, _FILES[version], strip_components=1)
    return folder


def _read(path: Path, delimiter: str, names: Sequence[str], encoding: str = "utf8") -> pa.Table:
    """A headerless delimited file; `::` (ML-1M) becomes a tab first, since pyarrow takes one-character delimiters."""
    data = path.read_bytes()
    if len(delimiter) > 1:
        data, delimiter = data.replace(delimiter.encode(), b"\t"), "\t"
    return pa_csv.read_csv(
        io.BytesIO(data),
        read_options=pa_csv.ReadOptions(column_names=list(names), encoding=encoding),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, quote_char=False),
        convert_options=pa_csv.ConvertOptions(column_types={"zip": pa.string(), "title": pa.string()}),
    )


def _read_items_100k(path: Path) -> pa.Table:
    flags = [f"g{i}" for i in range(len(ML100K_GENRES))]
    items = _read(path, "|", ["item", "title", "release", "video_release", "url", *flags], encoding="latin1")
    matrix = np.stack([items.column(f).to_numpy() for f in flags], axis=1)  # (items, 19)
    first = np.where(matrix.any(1), matrix.argmax(1), 0)
    return pa.table({"item": items.column("item"), "genre": pa.array(np.asarray(ML100K_GENRES)[first])})


def _join(left: pa.Table, key: str, right: pa.Table, columns: Sequence[str]) -> pa.Table:
    """Left join on `key` by index lookup (the right table has one row per key)."""
    position = pc.index_in(left.column(key), value_set=right.column(key))
    for name in columns:
        left = left.append_column(name, right.column(name).take(position))
    return left
