"""Ingest from object-store URIs (fsspec): the same dataset as from local files, the same errors.

fsspec's in-memory filesystem (``memory://``) stands in for s3:// / gs://: the readers take one code path
for every URI scheme, and only the driver (s3fs, gcsfs) differs.
"""

from __future__ import annotations

import uuid

import fsspec
import pandas as pd
import pytest

from hmarl.config import SyntheticConfig, build_config
from hmarl.data.canonical import read_canonical
from hmarl.data.readers import is_uri, resolve_files
from hmarl.data.synthetic import generate
from hmarl.errors import DataError
from hmarl.steps.runner import execute


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    bars, _ = generate(SyntheticConfig(num_symbols=4, num_bars=200, seed=5))
    return bars


@pytest.fixture
def bucket():
    """A fresh ``memory://`` prefix, removed afterwards (the in-memory store is process-wide)."""
    root = f"memory://bucket-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    path = root.removeprefix("memory://")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def put(df: pd.DataFrame, uri: str) -> str:
    if uri.endswith(".csv"):
        df.to_csv(uri, index=False)
    else:
        df.to_parquet(uri, index=False)
    return uri


def ingest(tmp_path, *overrides: str, name: str = "canon"):
    cfg = build_config({}, ["data.source=path", "universe.top_n=1000", *overrides])
    execute("ingest", cfg, outputs={"canonical": str(tmp_path / name)})
    return read_canonical(tmp_path / name)


@pytest.fixture
def local_reference(tmp_path, raw):
    path = tmp_path / "ref.parquet"
    raw.to_parquet(path, index=False)
    return ingest(tmp_path, f"data.path={path}", name="ref")


@pytest.mark.parametrize("layout", ["file", "folder", "glob", "wide"])
def test_object_store_uris_give_the_same_dataset_as_local_files(
    tmp_path, raw, bucket, local_reference, layout
):
    if layout == "file":
        args = [f"data.path={put(raw, f'{bucket}/bars.parquet')}"]
        files = [f"{bucket}/bars.parquet"]
    elif layout in ("folder", "glob"):
        half = len(raw) // 2
        files = [
            put(raw.iloc[:half], f"{bucket}/bars/a.csv"),
            put(raw.iloc[half:], f"{bucket}/bars/b.parquet"),
        ]
        fsspec.open(f"{bucket}/bars/README.md", "w").open().close()  # not data: skipped
        args = [f"data.path={bucket}/bars" if layout == "folder" else f"data.path={bucket}/bars/*.*"]
    else:
        files = [
            put(part.drop(columns="symbol"), f"{bucket}/wide/{sym}.parquet")
            for sym, part in raw.groupby("symbol")
        ]
        args = [f"data.path={bucket}/wide", "data.layout=wide"]
    data = ingest(tmp_path, *args)
    assert data.meta["fingerprint"] == local_reference.meta["fingerprint"]
    assert data.meta["symbols"] == local_reference.meta["symbols"]
    read = data.meta["source"]["files"]  # the URIs, scheme kept (fsspec's spelling for listed files)
    assert [f.rsplit("/", 1)[-1] for f in read] == sorted(f.rsplit("/", 1)[-1] for f in files)
    assert all(f.startswith("memory://") for f in read)
    pd.testing.assert_frame_equal(data.bars, local_reference.bars)


def test_benchmark_from_an_object_store(tmp_path, raw, bucket):
    spy = raw[raw["symbol"] == raw["symbol"].iloc[0]].assign(symbol="SPY")
    bars = put(raw, f"{bucket}/bars.parquet")
    bench = put(spy, f"{bucket}/spy.csv")
    data = ingest(tmp_path, f"data.path={bars}", f"data.benchmark_path={bench}")
    assert data.meta["benchmark_source"] == "file" and data.meta["benchmark_path"] == bench
    expected = spy.set_index("timestamp")["close"].to_numpy()
    assert data.benchmark["close"].to_numpy() == pytest.approx(expected)


def test_file_uri_reads_local_files_through_fsspec(tmp_path, raw, local_reference):
    path = tmp_path / "bars.parquet"
    raw.to_parquet(path, index=False)
    data = ingest(tmp_path, f"data.path=file://{path}")
    assert data.meta["fingerprint"] == local_reference.meta["fingerprint"]


@pytest.mark.parametrize(
    ("make", "spec", "match"),
    [
        (None, "{b}/missing.parquet", "data.path: file not found: {b}/missing.parquet"),
        ("{b}/docs/notes.txt", "{b}/docs", "data.path: folder {b}/docs holds no .parquet or .csv file"),
        (None, "{b}/*.parquet", "data.path: glob '{b}/\\*.parquet' matches no .parquet or .csv file"),
        ("{b}/bars.json", "{b}/bars.json", "data.path: {b}/bars.json: unsupported file type"),
        ("{b}/empty.csv", "{b}/empty.csv", "{b}/empty.csv: empty file"),
    ],
)
def test_bad_uris_are_data_errors_naming_the_path(bucket, make, spec, match):
    if make:
        fsspec.open(make.format(b=bucket), "w").open().close()
    with pytest.raises(DataError, match=match.format(b=bucket)):
        for f in resolve_files(spec.format(b=bucket)):
            from hmarl.data.readers import read_table

            read_table(f)


def test_unreadable_uri_and_unknown_scheme_are_data_errors(bucket):
    with fsspec.open(f"{bucket}/bad.parquet", "wb") as f:
        f.write(b"not parquet")
    from hmarl.data.readers import read_table

    (uri,) = resolve_files(f"{bucket}/bad.parquet")
    with pytest.raises(DataError, match=f"{uri}: cannot read file"):
        read_table(uri)
    with pytest.raises(DataError, match="data.path: nosuch://x/bars.parquet: Protocol not known: nosuch"):
        resolve_files("nosuch://x/bars.parquet")


def test_a_missing_object_store_driver_names_what_to_install():
    try:  # s3fs is an optional extra; without it the error says how to get it
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(
            DataError, match=r"data.path: s3://bucket/bars.parquet: Install s3fs .*hmarl\[cloud\]"
        ):
            resolve_files("s3://bucket/bars.parquet")
    else:
        pytest.skip("s3fs installed: nothing to name")


def test_uri_detection():
    assert is_uri("s3://b/k") and is_uri("gs://b/k") and is_uri("memory://x") and is_uri("file:///tmp/x")
    assert not is_uri("/data/bars.parquet") and not is_uri("data/*.csv") and not is_uri("C:\\bars.csv")
