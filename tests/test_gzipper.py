"""Parts are compressed as their text arrives, and still come out the same for the same text."""

from __future__ import annotations

import gzip
import io
import random

from amplitude_assets.destination import compress, writer


def test_the_same_text_gives_the_same_bytes_however_it_arrives(monkeypatch):
    monkeypatch.setattr(compress, "GZIP_PIECE", 1 << 12)  # many pieces from a small text
    text = "".join(f'{{"n":{i},"s":"{"é" * (i % 7)}{random.Random(i).random()}"}}\n' for i in range(3000)).encode()
    whole = writer.gzip_bytes(text)
    assert gzip.decompress(whole) == text
    assert whole[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip, mtime 0
    for seed in range(5):
        rng = random.Random(seed)
        out = io.BytesIO()
        gz = writer.Gzipper(out)
        at = 0
        while at < len(text):
            size = rng.choice([1, 7, 4095, 4096, 4097, 10_000, 50_000])
            gz.write(text[at:at + size])
            at += size
        gz.close()
        assert out.getvalue() == whole, seed
        assert gz.size == len(whole) and gz.md5.hexdigest() == __import__("hashlib").md5(whole).hexdigest()


def test_an_empty_text_is_an_empty_gzip():
    assert gzip.decompress(writer.gzip_bytes(b"")) == b""
