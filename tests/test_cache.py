"""aigc's caches: the token cache is made once and listed with its source; `aigc cache` lists and clears;
a failed MNIST download leaves no folders behind."""

import os
import time
import urllib.request

import pytest

from aigc.cli import main
from aigc.config import data_config
from aigc.data.text import load_token_data
from aigc.errors import AigcError
from aigc.io import cache


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tokens(tmp_path, text="to be or not to be, that is the question. " * 40):
    (tmp_path / "c.txt").write_text(text)
    return load_token_data(data_config("text", dir=str(tmp_path / "c.txt"), tokenizer="char"), block_size=8)


def test_token_cache_is_listed_with_its_source_and_cleared(tmp_path, cache_root, capsys):
    tokens(tmp_path)
    tokens(tmp_path)                                                         # reused, not a second entry
    tokens(tmp_path, "another corpus entirely. " * 50)
    found = cache.entries("tokens")
    assert len(found) == 2 and all("dataset=text" in e.source and "c.txt" in e.source for e in found)
    main(["cache"])
    out = capsys.readouterr().out
    assert out.count("tokens ") == 2 and "2 entries" in out
    old = found[0].paths[0]
    past = time.time() - 10 * 86400
    os.utime(old, (past, past))
    for f in old.iterdir():
        os.utime(f, (past, past))
    main(["cache", "--clear", "--older-than", "5"])
    assert "removed 1 cache entries" in capsys.readouterr().out
    assert not old.exists() and len(cache.entries()) == 1
    main(["cache", "tokens", "--clear"])
    assert cache.entries() == []
    main(["cache"])
    assert "no caches" in capsys.readouterr().out


def test_cache_bad_input(cache_root, capsys):
    with pytest.raises(AigcError, match="unknown cache 'tokenz'.*tokens"):
        cache.listing("tokenz")
    with pytest.raises(SystemExit) as e:
        main(["cache", "--older-than", "3"])
    assert e.value.code == 2 and "add --clear" in capsys.readouterr().err


@pytest.mark.parametrize("fetched", [None, b"not the mnist file"])
def test_failed_download_leaves_no_folders(tmp_path, monkeypatch, fetched):
    from io import BytesIO

    from aigc.data.mnist import load_mnist

    def urlopen(url, timeout):
        if fetched is None:
            raise OSError("offline")
        return BytesIO(fetched)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    (tmp_path / "kept").mkdir()
    with pytest.raises(AigcError, match="MNIST files missing"):
        load_mnist(tmp_path / "kept" / "new" / "mnist")
    assert list((tmp_path / "kept").iterdir()) == []                       # what it made is gone, not more
