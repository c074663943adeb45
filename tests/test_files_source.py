"""The files source: Amplitude-layout files in a local folder or an Azure container."""

from __future__ import annotations

import gzip
import io
import json
from datetime import datetime, timedelta, timezone

import pytest
from azure.storage.blob import ContentSettings

from amplitude_assets.destination.credentials import AzureStorage
from amplitude_assets.settings import SettingsError
from amplitude_assets.lines import line_chunks
from amplitude_assets.sources.files import FilesSource
from tests.conftest import unique_name
from tests.helpers import definitions, lines_of, materialize

PROJECT = "187520"
HOUR = datetime(2020, 1, 25, 17, tzinfo=timezone.utc)


def write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def local_root(tmp_path):
    folder = tmp_path / PROJECT
    # Parts written out of order; #10 must come after #2.
    write(folder / f"{PROJECT}_2020-01-25_17#10.json.gz", gzip.compress(b'{"n": 4}\n'))
    write(folder / f"{PROJECT}_2020-01-25_17#0.json.gz", gzip.compress(b'{"n": 0}\n{"n": 1}'))  # no final newline
    # A multi-member gzip file, as concatenated uploads produce.
    write(folder / f"{PROJECT}_2020-01-25_17#2.json.gz", gzip.compress(b'{"n": 2}\n') + gzip.compress(b'{"n": 3}\n'))
    # Amplitude's marker is not gzip; neither is a stray file that looks like a part.
    write(folder / f"{PROJECT}_2020-01-25_17_complete", b"")
    write(folder / f"{PROJECT}_2020-01-25_17#11.json.gz", b'{"n": "not gzip"}\n')
    # Other hours and names that share a prefix with hour 17 are not hour 17.
    write(folder / f"{PROJECT}_2020-01-25_1#0.json.gz", gzip.compress(b'{"hour": 1}\n'))
    write(folder / f"{PROJECT}_2020-01-25_17#3.json", b'{"n": "not a part name"}\n')
    write(folder / "999_2020-01-25_17#0.json.gz", gzip.compress(b'{"project": 999}\n'))
    return tmp_path


def test_local_parts_are_read_in_order_of_n(local_root):
    source = FilesSource(str(local_root), PROJECT)
    assert [n for n, _ in source.parts(HOUR)] == [0, 2, 10, 11]
    chunks = list(FilesSource(str(local_root), PROJECT, chunk_bytes=5).iter_lines(HOUR))
    assert b"".join(chunks) == b"".join(b'{"n": %d}\n' % i for i in range(5))
    assert all(c.endswith(b"\n") for c in chunks)
    one = FilesSource(f"file://{local_root}", PROJECT)
    assert b"".join(one.iter_lines(datetime(2020, 1, 25, 1, tzinfo=timezone.utc))) == b'{"hour": 1}\n'


def test_an_hour_is_the_utc_hour_that_holds_it(local_root):
    source = FilesSource(str(local_root), PROJECT)
    kolkata = timezone(timedelta(hours=5, minutes=30))
    for hour in (datetime(2020, 1, 25, 17), HOUR.replace(minute=59, second=59), datetime(2020, 1, 25, 23, 15, tzinfo=kolkata)):
        assert [n for n, _ in source.parts(hour)] == [0, 2, 10, 11], hour
        assert b"".join(source.iter_lines(hour)) == b"".join(b'{"n": %d}\n' % i for i in range(5)), hour


def test_an_hour_without_files_is_empty_and_a_missing_folder_is_named(local_root, tmp_path):
    assert list(FilesSource(str(local_root), PROJECT).iter_lines(datetime(2020, 1, 26, tzinfo=timezone.utc))) == []
    with pytest.raises(SettingsError, match="AMPLITUDE_FILES_URL"):
        list(FilesSource(str(tmp_path / "nowhere"), PROJECT).iter_lines(HOUR))


def test_line_chunks_end_at_line_boundaries():
    data = b'{"a": 1}\n{"long": "' + b"x" * 50 + b'"}\n{"b": 2}'
    for size in (1, 3, 8, 64, 1 << 20):
        chunks = list(line_chunks(io.BytesIO(data), size))
        assert b"".join(chunks) == data + b"\n"
        assert all(c.endswith(b"\n") and c.count(b"\n") >= 1 for c in chunks)


def test_az_url_needs_credentials_and_a_valid_container():
    with pytest.raises(SettingsError, match="AMPLITUDE_FILES_URL"):
        FilesSource("az://amplitude/raw", PROJECT)
    with pytest.raises(SettingsError, match="AMPLITUDE_FILES_URL"):
        FilesSource("az://amplitude/a//b", PROJECT, storage=object())


def test_blobs_in_azure_are_read_in_order_and_markers_skipped(azurite, fresh_container):
    client = fresh_container("src")
    name = client.container_name
    base = f"copied/amplitude/{PROJECT}/{PROJECT}_2020-01-25_17"
    gz = ContentSettings(content_type="application/gzip")
    client.upload_blob(f"{base}#1.json.gz", gzip.compress(b'{"n": 2}\n'), content_settings=gz)
    # Stored with Content-Encoding gzip: it must still be read as the gzip it is.
    client.upload_blob(f"{base}#0.json.gz", gzip.compress(b'{"n": 0}\n{"n": 1}'),
                       content_settings=ContentSettings(content_type="application/json", content_encoding="gzip"))
    client.upload_blob(f"{base}_complete", b"")
    client.upload_blob(f"copied/amplitude/{PROJECT}/{PROJECT}_2020-01-25_18#0.json.gz", gzip.compress(b'{"n": 9}\n'))
    storage = AzureStorage(connection_string=azurite)
    source = FilesSource(f"az://{name}/copied/amplitude/", PROJECT, storage=storage)
    assert b"".join(source.iter_lines(HOUR)) == b'{"n": 0}\n{"n": 1}\n{"n": 2}\n'
    missing = FilesSource(f"az://{unique_name('nope')}/x", PROJECT, storage=storage)
    with pytest.raises(SettingsError, match="does not exist"):
        list(missing.iter_lines(HOUR))


def test_an_exported_hour_reexports_line_for_line(container, settings_env, fresh_container, blobs):
    """Synthetic into container A (prefix raw), then files from az://A/raw into container B."""
    settings_env(AMPLITUDE_START="2020-01-25-00:00", AMPLITUDE_SYNTHETIC_EVENTS_PER_HOUR=400,
                 AMPLITUDE_MAX_ROWS_PER_FILE=150, AZURE_EVENTS_PREFIX="raw")
    assert materialize(definitions(), ["events"], partition="2020-01-25-17:00").success
    first = blobs(container, prefix=f"raw/{PROJECT}/")

    target = fresh_container("b").container_name
    settings_env(AMPLITUDE_SOURCE="files", AMPLITUDE_FILES_URL=f"az://{container}/raw", AZURE_EVENTS_CONTAINER=target,
                 AZURE_EVENTS_PREFIX="")
    assert materialize(definitions(), ["events"], partition="2020-01-25-17:00").success
    second = blobs(target, prefix=f"{PROJECT}/")

    folder = f"{PROJECT}/{PROJECT}_2020-01-25_17"
    parts_a = [v for k, v in sorted(first.items()) if k.startswith(f"raw/{folder}#")]
    parts_b = [v for k, v in sorted(second.items()) if k.startswith(f"{folder}#")]
    assert len(parts_a) == len(parts_b) == 3  # the markers (not gzip) were skipped
    lines_a = [line for p in parts_a for line in gzip.decompress(p).decode().splitlines()]
    lines_b = [line for p in parts_b for line in gzip.decompress(p).decode().splitlines()]
    assert lines_a == lines_b and len(lines_a) > 300
    assert parts_a == parts_b  # same rows, same split, same bytes
    manifest = json.loads(second[f"{folder}_complete"])
    assert manifest["source"] == "files"
    counts = manifest["counts"]
    assert counts["source_rows"] == counts["exported"] == json.loads(first[f"raw/{folder}_complete"])["rows"]
    assert counts["duplicates"] == counts["rejected"] == 0
    assert lines_of(second[f"{folder}#0.json.gz"])[0] == json.loads(lines_a[0])
