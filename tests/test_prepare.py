"""``python -m parcae.prepare`` end to end on Austen excerpts, and ``data.source: tokens``."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from parcae.config import ConfigError
from parcae.data import DataConfig, build_data
from parcae.data.corpus import WindowSource, austen_books, decode
from parcae.data.documents import val_count
from parcae.prepare import SEPARATOR, main
from parcae.run import plan, resolve, train_run

VOCAB = 512


def excerpt(book: int, start: int, size: int) -> str:
    """About ``size`` characters of an Austen novel, from ``start``, cut at line ends."""
    text = decode(austen_books()[book].tokens)
    begin = text.index("\n", start) + 1
    return text[begin : text.index("\n", begin + size) + 1]


def paragraphs(book: int, count: int) -> list[str]:
    """``count`` paragraphs (documents for JSONL / Parquet), with non-ASCII text among them."""
    paras = [p.strip() for p in decode(austen_books()[book].tokens).split("\n\n") if p.strip()]
    return [*paras[100 : 100 + count - 1], "Naïve café — £20,000 ✓"]


def prepare(*args: str | Path) -> dict:
    assert main([str(a) for a in args]) == 0
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "metadata.json").read_text())


def shard_ids(out: Path, meta: dict, split: str) -> np.ndarray:
    return np.concatenate([np.fromfile(out / s["path"], dtype=meta["dtype"])
                           for s in meta["splits"][split]["shards"]])


def tokenizer(out: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(out / "tokenizer.json"))


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """One 300 kB text file prepared with a trained 512-token BPE: (text file, out, meta)."""
    root = tmp_path_factory.mktemp("book")
    text = root / "emma.txt"
    text.write_text(excerpt(3, 20_000, 300_000), encoding="utf-8")
    out = root / "prepared"
    return text, out, prepare(text, "--out", out, "--vocab-size", VOCAB, "--shard-tokens",
                              30_000)


def test_text_file_metadata_checksums_and_round_trip(book) -> None:
    text, out, meta = book
    assert meta["format"] == "parcae.tokens/1" and meta["parcae_version"]
    assert meta["vocab_size"] == VOCAB and meta["dtype"] == "uint16"
    assert meta["tokenizer"]["kind"] == "bpe" and meta["tokenizer"]["path"] == "tokenizer.json"
    assert meta["tokenizer"]["sha256"] == hashlib.sha256(
        (out / "tokenizer.json").read_bytes()).hexdigest()
    [source] = meta["sources"]
    assert source["path"] == str(text.resolve()) and source["format"] == "text"
    assert source["sha256"] == hashlib.sha256(text.read_bytes()).hexdigest()
    assert source["bytes"] == text.stat().st_size
    for split in ("train", "val"):  # counts add up: shards -> split -> sources -> file sizes
        shards = meta["splits"][split]["shards"]
        assert sum(s["tokens"] for s in shards) == meta["splits"][split]["tokens"]
        assert meta["splits"][split]["tokens"] == source[f"{split}_tokens"]
        for s in shards:
            assert (out / s["path"]).stat().st_size == 2 * s["tokens"] <= 2 * 30_000
    assert len(meta["splits"]["train"]["shards"]) >= 2  # --shard-tokens split it
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["metadata.json", "tokenizer.json", "unigram.npy",
         *(s["path"] for split in ("train", "val") for s in meta["splits"][split]["shards"])])

    # Decoding round-trips the file exactly; the document's separator ends the val split.
    tok = tokenizer(out)
    train, val = shard_ids(out, meta, "train"), shard_ids(out, meta, "val")
    assert int(max(train.max(), val.max())) < VOCAB
    assert val[-1] == meta["separator_id"] == tok.token_to_id(SEPARATOR)
    original = text.read_text(encoding="utf-8")
    decoded_train = tok.decode(train.tolist(), skip_special_tokens=False)
    decoded_val = tok.decode(val.tolist(), skip_special_tokens=False)
    assert decoded_train + decoded_val == original + SEPARATOR
    unigram = np.load(out / "unigram.npy")
    assert np.array_equal(unigram, np.bincount(train, minlength=VOCAB))
    # Validation is the file's tail from a line start: about --val-fraction of its bytes.
    assert decoded_train.endswith("\n")
    assert 0.09 < len(decoded_val.encode()) / len(original.encode()) < 0.11
    # A 512-token BPE compresses English well beyond bytes.
    assert len(original.encode()) / (len(train) + len(val)) > 2.0


def test_training_run_on_the_prepared_folder(book, tmp_path: Path) -> None:
    _, out, meta = book
    cfg = resolve({"model": {"preset": "tiny"},
                   "data": {"source": "tokens", "path": str(out), "seq_len": 32,
                            "batch_size": 4},
                   "train": {"tokens": 2560, "val_every": 10, "val_batches": 2},
                   "tracking": {"enabled": False}})
    source = build_data(cfg.data)
    assert source.vocab_size == VOCAB and plan(cfg).model.vocab_size == VOCAB
    assert source.train_tokens == meta["splits"]["train"]["tokens"]
    x, y = next(source.train_batches(0))
    assert torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < VOCAB
    # Windows decode to text of the book (the tokenizer travels with the folder).
    original = (out.parent / "emma.txt").read_text(encoding="utf-8")
    words = source.decode(x[0]).split()[1:-1]  # the ends may be cut tokens
    assert len(words) >= 3 and " ".join(words) in " ".join(original.split())

    # The unigram baseline from the stored counts equals a scan of the shards.
    batches = source.val_batches(2)
    scanned = WindowSource(source.train, source.val, vocab_size=VOCAB, batch_size=4,
                           seq_len=32, name="scan")
    assert source.baseline_loss(batches) == pytest.approx(scanned.baseline_loss(batches),
                                                          rel=1e-12)

    result = train_run(cfg, tmp_path / "run")
    assert result.status in ("ok", "collapsed") and result.error is None
    assert result.tokens == 2560
    # It learned something: below the uniform predictor's loss over the 512 tokens.
    assert result.val_loss is not None and result.val_loss < math.log(VOCAB)


def test_folder_settings_and_corruption_are_checked(book, tmp_path: Path) -> None:
    _, out, meta = book
    via_meta = build_data(DataConfig(source="tokens", path=str(out / "metadata.json"),
                                     vocab_size=VOCAB, seq_len=16))
    assert via_meta.vocab_size == VOCAB
    with pytest.raises(ConfigError) as err:
        build_data(DataConfig(source="tokens", path=str(out), vocab_size=1000))
    assert err.value.key == "vocab_size"
    assert "1000" in err.value.message and str(VOCAB) in err.value.message

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in out.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    shard = broken / meta["splits"]["val"]["shards"][0]["path"]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ConfigError) as err:
        build_data(DataConfig(source="tokens", path=str(broken)))
    assert err.value.key == "path" and str(shard) in err.value.message
    (broken / "metadata.json").unlink()
    with pytest.raises(ConfigError) as err:
        build_data(DataConfig(source="tokens", path=str(broken)))
    assert "parcae.prepare" in err.value.message


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> None:
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs))
                    + "\n", encoding="utf-8")  # a blank line is skipped


def test_jsonl_folder_glob_and_a_given_tokenizer(book, tmp_path: Path) -> None:
    _, first, first_meta = book
    docs = paragraphs(1, 40)
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    write_jsonl(corpus / "sub" / "pride.jsonl", docs)
    (corpus / "notes.csv").write_text("skipped: not a corpus format\n")
    (corpus / "persuasion.md").write_text(excerpt(5, 1000, 20_000), encoding="utf-8")
    out = tmp_path / "out"
    meta = prepare(corpus, str(corpus / "*.md"), "--out", out, "--tokenizer",
                   first / "tokenizer.json", "--val-fraction", "0.25")
    # The folder and the glob name persuasion.md twice: it is read once; the .csv is skipped.
    assert [Path(s["path"]).name for s in meta["sources"]] == ["persuasion.md", "pride.jsonl"]
    assert meta["tokenizer"]["kind"] == "given" and meta["vocab_size"] == VOCAB
    assert meta["tokenizer"]["source_sha256"] == first_meta["tokenizer"]["sha256"]
    assert (out / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()
    jsonl = meta["sources"][1]
    n_val = val_count(len(docs), 0.25)
    assert (jsonl["train_documents"], jsonl["val_documents"]) == (len(docs) - n_val, n_val)

    # The JSONL documents come back exactly, each followed by the separator; validation is
    # the last quarter of them. Sources are written in order, so pride.jsonl comes last.
    tok = tokenizer(out)
    train, val = shard_ids(out, meta, "train"), shard_ids(out, meta, "val")
    train_text = tok.decode(train[-jsonl["train_tokens"]:].tolist(), skip_special_tokens=False)
    val_text = tok.decode(val[-jsonl["val_tokens"]:].tolist(), skip_special_tokens=False)
    assert train_text == "".join(d + SEPARATOR for d in docs[: len(docs) - n_val])
    assert val_text == "".join(d + SEPARATOR for d in docs[len(docs) - n_val :])
    expected = [t for d in docs[: len(docs) - n_val]
                for t in [*tok.encode(d, add_special_tokens=False).ids, meta["separator_id"]]]
    assert train[-jsonl["train_tokens"]:].tolist() == expected


def test_parquet_matches_jsonl(book, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet input needs the optional pyarrow")
    import pyarrow.parquet as pq

    _, first, _ = book
    docs = paragraphs(2, 30)
    write_jsonl(tmp_path / "a.jsonl", docs, field="body")
    pq.write_table(pa.table({"body": docs, "n": list(range(len(docs)))}), tmp_path / "a.parquet",
                   row_group_size=7)
    metas = [prepare(tmp_path / f"a.{kind}", "--out", tmp_path / kind, "--tokenizer",
                     first / "tokenizer.json", "--text-field", "body")
             for kind in ("jsonl", "parquet")]
    assert metas[1]["sources"][0]["format"] == "parquet"
    for split in ("train", "val"):
        assert np.array_equal(shard_ids(tmp_path / "jsonl", metas[0], split),
                              shard_ids(tmp_path / "parquet", metas[1], split))


def test_vocabulary_past_uint16_is_stored_as_uint32(book, tmp_path: Path) -> None:
    _, first, _ = book
    tok = tokenizer(first)
    tok.add_special_tokens([f"<x{i}>" for i in range(66_000)])  # ids up to 66,511
    given = tmp_path / "big.json"
    tok.save(str(given))
    text = tmp_path / "t.txt"
    text.write_text((excerpt(4, 0, 3000) + "a rare <x65500> token\n") * 3, encoding="utf-8")
    out = tmp_path / "out"
    meta = prepare(text, "--out", out, "--tokenizer", given)
    assert meta["vocab_size"] == VOCAB + 66_000 and meta["dtype"] == "uint32"
    ids = np.concatenate([shard_ids(out, meta, "train"), shard_ids(out, meta, "val")])
    assert (ids == tok.token_to_id("<x65500>")).sum() == 3 and int(ids.max()) > 65_535
    assert tok.decode(ids.tolist(), skip_special_tokens=False) == text.read_text() + SEPARATOR
    source = build_data(DataConfig(source="tokens", path=str(out), seq_len=16))
    assert source.vocab_size == VOCAB + 66_000


def bad(args: list[str | Path], capsys: pytest.CaptureFixture[str]) -> str:
    assert main([str(a) for a in args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # one error line, the last; progress lines may come before it
    assert [line for line in lines if "bad input" in line] == lines[-1:]
    assert lines[-1].startswith("parcae.prepare: bad input:")
    return lines[-1]


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path: Path, capsys) -> None:
    text = tmp_path / "a.txt"
    text.write_text(excerpt(0, 0, 5000), encoding="utf-8")
    out = tmp_path / "out"
    vocab = ["--vocab-size", "300"]
    cases = [
        ([tmp_path / "missing.txt", "--out", out, *vocab], ["INPUT", "missing.txt"]),
        ([str(tmp_path / "*.ndjson"), "--out", out, *vocab], ["INPUT", "no file matches"]),
        ([text, "--out", out, "--vocab-size", "100"], ["--vocab-size", "257", "100"]),
        ([text, "--out", out, *vocab, "--val-fraction", "1.5"], ["--val-fraction"]),
        ([text, "--out", text / "x", *vocab], ["--out", "cannot write"]),
        ([text, "--out", out, "--tokenizer", text], ["--tokenizer", "a.txt"]),
    ]
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    cases.append(([empty, "--out", out, *vocab], ["INPUT", "empty"]))
    oneline = tmp_path / "one.txt"
    oneline.write_text("a single line without a break, so nothing is left for validation")
    cases.append(([oneline, "--out", out, *vocab], ["validation split is empty"]))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café\n".encode("latin-1") * 10)
    cases.append(([latin, "--out", out, *vocab], ["UTF-8", "latin.txt"]))
    jsonl = tmp_path / "d.jsonl"
    write_jsonl(jsonl, ["one", "two", "three"], field="body")
    cases.append(([jsonl, "--out", out, *vocab], ["--text-field", "'text'", "d.jsonl:1"]))
    (tmp_path / "c.csv").write_text("x\n")
    cases.append(([tmp_path / "c.csv", "--out", out, *vocab], ["INPUT", ".jsonl"]))
    for args, words in cases:
        err = bad(args, capsys)
        assert all(w in err for w in words), (args, err)
        assert not out.exists()

    # A given tokenizer without the separator: name it, or pass --separator ''.
    given = tmp_path / "given"
    prepare(text, "--out", given, "--vocab-size", 300)
    err = bad([text, "--out", out, "--tokenizer", given / "tokenizer.json", "--separator",
               "<eos>"], capsys)
    assert "--separator" in err and "<eos>" in err and not out.exists()
    meta = prepare(text, "--out", out, "--tokenizer", given / "tokenizer.json",
                   "--separator", "")
    assert meta["separator_id"] is None
    assert bad([text, "--out", out, *vocab], capsys).count("not an empty folder") == 1


def test_cli_help_is_fast_and_the_process_exits_2(tmp_path: Path) -> None:
    code = ("import sys; from parcae.prepare import parse_args; "
            "parse_args(['x', '--out', 'y', '--vocab-size', '300']); "
            "print(sorted({'torch', 'tokenizers', 'numpy'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"  # heavy imports wait until after argument parsing
    proc = subprocess.run([sys.executable, "-m", "parcae.prepare", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "o"), "--vocab-size", "300"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nope" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
