"""MovieLens: the MLoRA protocol on the real ML-100K, ML-1M's raw format, and download through a loopback server."""

import functools
import http.server
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlora_peft.data import TimeSplit, load_movielens, read_movielens

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML100K = SHARED / "ml-100k"
needs_ml100k = pytest.mark.skipif(not (ML100K / "u.data").is_file(),
                                  reason=f"MovieLens-100K not found at {ML100K} (shared data folder absent)")


def _all_rows(data) -> pd.DataFrame:
    return pd.concat([data.splits[n].to_pandas().assign(split=n) for n in ("train", "validation", "test")])


@needs_ml100k
def test_ml100k_gender_protocol_counts_and_exact_stratified_splits():
    data = load_movielens(ML100K, version="100k", domain="gender", label="rating==5", seed=0)
    rows = _all_rows(data)
    assert len(rows) == 100_000 and data.domain_names == ("F", "M")
    assert rows.groupby("domain_id").size().tolist() == [25_740, 74_260]
    assert int(rows["label"].sum()) == 21_201
    for (_, _), cell in rows.groupby(["domain_id", "label"]):
        counts = cell["split"].value_counts()
        for split, share in (("train", 0.6), ("validation", 0.2), ("test", 0.2)):
            assert abs(counts.get(split, 0) - share * len(cell)) <= 1
    again = load_movielens(ML100K, domain="gender", seed=0)
    for name in ("train", "validation", "test"):
        assert again.splits[name].to_dict() == data.splits[name].to_dict()
    other_seed = load_movielens(ML100K, domain="gender", seed=1)
    assert other_seed.splits["test"]["user"] != data.splits["test"]["user"]
    assert [f.name for f in data.feature_spec] == ["user", "item"]


@needs_ml100k
def test_ml100k_age_and_occupation_domains():
    age = load_movielens(ML100K, domain="age")
    assert age.domain_names == ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
    occupation = load_movielens(ML100K, domain="occupation", label="rating>3", side_features=True)
    assert occupation.num_domains == 21
    assert [f.name for f in occupation.feature_spec] == ["user", "item", "gender", "age", "zip", "genre"]
    assert int(_all_rows(occupation)["label"].sum()) == 34_174 + 21_201


@needs_ml100k
def test_ml100k_genre_group_domains_match_a_hand_count_from_the_raw_files():
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
              "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
              "Western"]
    group = {"Action": "action", "Adventure": "action", "Sci-Fi": "action", "Fantasy": "action", "War": "action",
             "Western": "action", "Comedy": "comedy", "Animation": "comedy", "Children's": "comedy",
             "Musical": "comedy", "Drama": "drama", "Romance": "drama", "Thriller": "thriller", "Crime": "thriller",
             "Horror": "thriller", "Mystery": "thriller", "Film-Noir": "thriller"}
    item_group = {}
    for line in (ML100K / "u.item").read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        flags = [int(f) for f in fields[5:]]
        first = genres[flags.index(1)] if 1 in flags else "unknown"
        item_group[int(fields[0])] = group.get(first, "other")
    expected = {}
    for line in (ML100K / "u.data").read_text().splitlines():
        item = int(line.split("\t")[1])
        expected[item_group[item]] = expected.get(item_group[item], 0) + 1
    data = load_movielens(ML100K, domain="genre_group", side_features=True)
    assert data.domain_names == ("action", "comedy", "drama", "thriller", "other")
    sizes = _all_rows(data).groupby("domain_id").size().tolist()
    assert sizes == [expected[name] for name in data.domain_names]
    assert "genre_group" not in [f.name for f in data.feature_spec]


def _write_ml1m(folder: Path) -> None:
    """A few rows in ML-1M's exact raw format (`::` separators, latin-1 titles with `|` genres)."""
    folder.mkdir(parents=True, exist_ok=True)
    users = ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::55117", "4::M::45::7::02460"]
    (folder / "users.dat").write_text("\n".join(users) + "\n")
    movies = ["1::Toy Story (1995)::Animation|Children's|Comedy", "2::Jumanji (1995)::Adventure|Children's|Fantasy",
              "3::Amélie (2001)::Comedy|Romance"]
    (folder / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    rng = np.random.default_rng(0)
    ratings = [f"{u}::{m}::{rng.integers(1, 6)}::{978300760 + i}" for i, (u, m) in
               enumerate((u, m) for u in range(1, 5) for m in range(1, 4) for _ in range(5))]
    (folder / "ratings.dat").write_text("\n".join(ratings) + "\n")


def test_ml1m_raw_format(tmp_path):
    _write_ml1m(tmp_path / "ml-1m")
    table = read_movielens(tmp_path / "ml-1m", "1m").to_pandas()
    assert len(table) == 60
    first = table.iloc[0]
    assert (first["gender"], first["age"], first["occupation"], first["genre"]) == ("F", "<18", "K-12 student",
                                                                                    "Animation")
    assert set(table["age"]) == {"<18", "56+", "25-34", "45-49"}
    data = load_movielens(tmp_path / "ml-1m", version="1m", domain="age", label="rating>3")
    assert data.domain_names == ("<18", "25-34", "45-49", "56+")
    occupation = load_movielens(tmp_path / "ml-1m", version="1m", domain="occupation")
    assert occupation.domain_names == ("executive/managerial", "K-12 student", "scientist", "self-employed")
    with pytest.raises(ValueError, match=r"\['executive/managerial'\] appear in the validation split but not in train"):
        load_movielens(tmp_path / "ml-1m", version="1m", domain="occupation", split=TimeSplit("timestamp"))


def test_bad_arguments_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="version='10m'"):
        load_movielens(tmp_path, version="10m")
    with pytest.raises(ValueError, match="domain='zip'"):
        load_movielens(tmp_path, domain="zip")
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_movielens(tmp_path)


def _serve(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_download_fetches_and_extracts_into_the_cache(tmp_path):
    source = tmp_path / "source"
    _write_ml1m(source / "ml-1m")
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "ml-1m.zip", "w") as bundle:
        for file in (source / "ml-1m").iterdir():
            bundle.write(file, f"ml-1m/{file.name}")
    server = _serve(served)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ml-1m.zip"
        cache = tmp_path / "cache"
        data = load_movielens(version="1m", domain="gender", download=True, cache_dir=cache, url=url)
        assert (cache / "ml-1m" / "ratings.dat").is_file() and data.domain_names == ("F", "M")
        (served / "ml-1m.zip").unlink()  # a second call reads the cache without fetching
        load_movielens(version="1m", download=True, cache_dir=cache, url=url)
        with pytest.raises(OSError, match="Could not download"):
            load_movielens(version="100k", download=True, cache_dir=cache, url=url)
    finally:
        server.shutdown()


def test_download_refuses_archives_that_escape_the_folder(tmp_path):
    from mlora_peft.data.download import fetch_zip

    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as bundle:
        bundle.writestr("ml-1m/../../escaped.txt", "x")
    with pytest.raises(ValueError, match="outside"):
        fetch_zip((tmp_path / "evil.zip").as_uri(), tmp_path / "target", ["x"], strip_components=1)
    assert not (tmp_path / "escaped.txt").exists()
