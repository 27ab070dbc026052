"""The README's corpus path: compressed inputs to ``parcae.prepare``, a grid's relative
``data.path``, and (slow) prepare -> train -> sweep -> fit as the commands a user types."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from parcae.config import ConfigError
from parcae.data.corpus import AUSTEN_ASSET, asset_path, austen_books, decode
from parcae.grid import expand, parse_grid
from parcae.prepare import main

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "grids" / "corpus.yaml"


def text_of(book: int, size: int) -> str:
    """About ``size`` characters of an Austen novel, cut at a line end."""
    text = decode(austen_books()[book].tokens)
    return text[: text.index("\n", size) + 1]


def prepare(*args: str | Path) -> dict:
    assert main([str(a) for a in args]) == 0
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "metadata.json").read_text())


def shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A 120 kB text file and its preparation (300-token BPE): (file, out, metadata)."""
    root = tmp_path_factory.mktemp("plain")
    path = root / "book.txt"
    path.write_text(text_of(1, 120_000), encoding="utf-8")
    out = root / "prepared"
    return path, out, prepare(path, "--out", out, "--vocab-size", 300)


@pytest.mark.parametrize("suffix", [".gz", ".xz"])
def test_compressed_text_prepares_like_the_plain_file(plain, tmp_path: Path, suffix: str) -> None:
    path, out, meta = plain
    packed = tmp_path / f"book.txt{suffix}"
    opener = gzip.open if suffix == ".gz" else lzma.open
    with opener(packed, "wb") as f:
        f.write(path.read_bytes())
    got = prepare(packed, "--out", tmp_path / "out", "--vocab-size", 300)
    # the same split, tokenizer and ids; the checksum is of the file as given
    assert shards(tmp_path / "out") == shards(out)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == \
        (out / "tokenizer.json").read_bytes()
    assert got["splits"] == meta["splits"]
    [source] = got["sources"]
    assert source["format"] == "text" and source["bytes"] == packed.stat().st_size
    assert source["sha256"] == hashlib.sha256(packed.read_bytes()).hexdigest()
    assert source["sha256"] != meta["sources"][0]["sha256"]
    # the BPE read the training split's text, not the compressed bytes
    assert got["tokenizer"]["trained_on_bytes"] == meta["tokenizer"]["trained_on_bytes"]


def test_compressed_jsonl_in_a_folder_and_the_shipped_asset(tmp_path: Path) -> None:
    docs = [{"text": p} for p in text_of(2, 60_000).split("\n\n") if p.strip()]
    lines = "".join(json.dumps(d) + "\n" for d in docs).encode()
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    (tmp_path / "plain" / "docs.jsonl").write_bytes(lines)
    with gzip.open(tmp_path / "packed" / "docs.jsonl.gz", "wb") as f:
        f.write(lines)
    a = prepare(tmp_path / "plain", "--out", tmp_path / "a", "--vocab-size", 300)
    b = prepare(tmp_path / "packed", "--out", tmp_path / "b", "--vocab-size", 300)
    assert shards(tmp_path / "a") == shards(tmp_path / "b")
    assert b["sources"][0]["format"] == "jsonl"
    assert b["sources"][0]["val_documents"] == a["sources"][0]["val_documents"] > 0
    # the packaged Austen file (.xz) is one text file of the six novels, read decompressed
    from parcae.data.documents import content_bytes, find_inputs

    [asset] = find_inputs([str(asset_path(AUSTEN_ASSET))])
    assert (asset.kind, asset.compression) == ("text", ".xz")
    assert content_bytes(asset) == len(lzma.decompress(asset.path.read_bytes()))


def test_bad_compressed_inputs_are_exit_2_and_leave_nothing(plain, tmp_path: Path,
                                                           capsys) -> None:
    path, _, _ = plain
    whole = gzip.compress(path.read_bytes())
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    assert main([str(cut), "--out", str(out), "--vocab-size", "300"]) == 2
    assert "not readable .gz data" in capsys.readouterr().err and not out.exists()
    pq = tmp_path / "rows.parquet.gz"
    pq.write_bytes(whole)
    assert main([str(pq), "--out", str(out), "--vocab-size", "300"]) == 2
    assert "unknown format" in capsys.readouterr().err
    zst = tmp_path / "book.txt.zst"
    try:
        import zstandard
    except ImportError:  # a clear error naming the package, not a traceback
        zst.write_bytes(b"\x28\xb5\x2f\xfd")
        assert main([str(zst), "--out", str(out), "--vocab-size", "300"]) == 2
        assert "pip install zstandard" in capsys.readouterr().err and not out.exists()
    else:
        zst.write_bytes(zstandard.ZstdCompressor().compress(path.read_bytes()))
        assert main([str(zst), "--out", str(out), "--vocab-size", "300"]) == 0


def test_a_relative_data_path_is_made_absolute_where_the_sweep_starts(
        plain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, out, meta = plain
    grid = yaml.safe_load(GRID.read_text())
    block = grid["metadata"]["parcae"]
    block["axes"] = {"loops": [1, 2], "tokens": [2048]}
    monkeypatch.chdir(out.parent)
    block["base"]["data"]["path"] = out.name
    trials = expand(parse_grid(grid))
    # trials run in folders of their own: they get the absolute folder
    assert {t.cfg.data.path for t in trials} == {str(out)}
    assert {t.plan.model.vocab_size for t in trials} == {meta["vocab_size"]}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="parcae.prepare"):
        expand(parse_grid(grid))


def test_the_grid_without_its_corpus_says_how_to_make_it(tmp_path: Path) -> None:
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "corpus.yaml").write_text(GRID.read_text())
    proc = subprocess.run([sys.executable, "-m", "parcae.sweep", "grids/corpus.yaml",
                           "--dry-run", "--reports", "reports"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"not found: {tmp_path / 'corpora' / 'austen'}" in proc.stderr
    assert "python -m parcae.prepare" in proc.stderr and "Traceback" not in proc.stderr


def run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # each command's default store, under cwd/reports
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_prepare_train_sweep_fit_as_the_readme_says(tmp_path: Path) -> None:
    """The README's commands, run where a user runs them, on a reduced copy of the grid."""
    asset = asset_path(AUSTEN_ASSET)
    run(["parcae.prepare", str(asset), "--out", "corpora/austen", "--vocab-size", "2048"],
        tmp_path, 240)
    meta = json.loads((tmp_path / "corpora/austen/metadata.json").read_text())
    vocab, train_tokens = meta["vocab_size"], meta["splits"]["train"]["tokens"]
    assert vocab == 2048 and meta["dtype"] == "uint16"
    [source] = meta["sources"]
    assert source["sha256"] == hashlib.sha256(asset.read_bytes()).hexdigest()
    assert source["bytes"] == asset.stat().st_size and source["format"] == "text"
    assert train_tokens == source["train_tokens"] > 9 * source["val_tokens"] * 0.9

    run(["parcae.train", "--set", "data.source=tokens", "--set", "data.path=corpora/austen",
         "--set", "train.tokens=16384", "--out", "result"], tmp_path, 240)
    result = json.loads((tmp_path / "result/result.json").read_text())
    assert result["status"] == "ok" and result["config"]["data"]["source"] == "tokens"
    assert result["config"]["model"]["vocab_size"] == vocab
    assert result["epochs"] == pytest.approx(result["tokens"] / train_tokens)

    grid = yaml.safe_load(GRID.read_text())
    block = grid["metadata"]["parcae"]
    assert block["base"]["data"] == {**block["base"]["data"], "source": "tokens",
                                     "path": "corpora/austen"}
    block["axes"] = {"loops": [1, 2], "flops": [2.0e10, 4.0e10], "seed": [0]}
    block["base"]["train"]["val_every"] = 20
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids/corpus.yaml").write_text(yaml.safe_dump(grid))
    run(["parcae.sweep", "grids/corpus.yaml"], tmp_path, 400)
    with (tmp_path / "reports/corpus/runs.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    assert {(r["loops"], r["status"], r["source"]) for r in rows} == {
        ("1", "ok", "tokens"), ("2", "ok", "tokens")}
    for row in rows:
        assert float(row["epochs"]) == pytest.approx(int(row["tokens"]) / train_tokens,
                                                     rel=1e-6)
        assert np.isfinite(float(row["val_loss"]))

    run(["parcae.fit", "reports/corpus"], tmp_path, 300)
    fits = json.loads((tmp_path / "reports/corpus/fits.json").read_text())
    assert fits and (tmp_path / "reports/corpus/report.md").read_text().strip()
