"""The compiled block parser (numba_parser.scan_block via parse_block) against simple references:
Biopython + normalise + the alphabet table for tokens, parse_header for header fields, and the
Arrow-regex split keys + NumPy hash for splits."""

import io

import numpy as np
import pyarrow as pa
import pytest
from Bio.SeqIO.FastaIO import SimpleFastaParser

from proteinperf.data import get_alphabet, parse_header
from proteinperf.data.blocks import (
    DROPPED,
    assign_splits,
    hash_strings,
    parse_block,
    split_keys,
)
from proteinperf.data.fasta import NO_ID, normalise

TRICKY = [
    # a short last line whose width guess lands on a newline inside the next record
    b">a\nACDEFGHIKL\nMK\n>b\nMKVL\n>c\nMKV",
    b">crlf x\r\nAC DE\r\nFG*\r\n>tabs\nA\tC\n \nD\n>empty\n>empty2\r\n>low n=1\nacd\nef\n",
    b">stars\nMKV**\n*\n>blank\n\n\nMK\n\nV\n>noeol\nMKV",
    b">w1\nA\nC\nD\n>w7\nACDEFGH\nIKLMNPQ\nRS\n>wide\n" + b"ACDEFGHIKLMNPQRSTVWY" * 40 + b"\n",
    b">only-header",
    b">x\n\n",
]


def _reference(data: bytes, unk: bool = False):
    """(id, tokens) per non-empty record: Biopython, then normalise, then the table."""
    alphabet = get_alphabet()
    out = []
    for title, seq in SimpleFastaParser(io.StringIO(data.decode(), newline="")):
        seq = normalise(seq)
        if not seq:
            continue
        toks = [alphabet.tok_to_idx.get(c, alphabet.unk_idx if unk else -1) for c in seq]
        assert -1 not in toks
        out.append((title.split(" ", 1)[0], toks))
    return out


def _ours(data: bytes, **options):
    r = parse_block(data, valid_fraction=0, test_fraction=0, **options)
    assert r["error"] is None
    ends = np.cumsum(r["lengths"][0])
    toks = r["tokens"][0]
    ids = r["meta"][0].column("id").to_pylist()
    return [(i, toks[e - n : e].tolist()) for i, e, n in zip(ids, ends, r["lengths"][0])], r


def _random_fasta(rng, records=300) -> bytes:
    residues = b"ACDEFGHIKLMNPQRSTVWYXBUZOacdefghiklmnpqrstvwy.-"
    parts = []
    for k in range(records):
        eol = b"\r\n" if rng.random() < 0.2 else b"\n"
        parts.append(b">r%d desc %d n=%d%s" % (k, k % 5, k % 3, eol))
        seq = rng.choice(np.frombuffer(residues, np.uint8), int(rng.integers(0, 400)))
        width = int(rng.integers(1, 90))
        for s in range(0, seq.size, width):
            line = bytes(seq[s : s + width])
            if rng.random() < 0.03:
                line = line[:1] + b" \t" + line[1:]
            if rng.random() < 0.03:
                parts.append(eol)  # a blank line
            parts.append(line + eol)
        if rng.random() < 0.05:
            parts.append(b"*" + eol)
    data = b"".join(parts)
    return data[:-1] if rng.random() < 0.5 else data


RANDOM = [_random_fasta(np.random.default_rng(seed)) for seed in range(5)]


@pytest.mark.parametrize("data", TRICKY + RANDOM)
def test_tokens_equal_biopython(data):
    ours, r = _ours(data)
    assert ours == _reference(data)
    assert r["newlines"] == data.count(b"\n")


def test_invalid_characters_against_reference():
    data = b">a\nMKJ*V\n>b\nMK*\n>c\nM~K\n>d\nMKV\n"
    ours, r = _ours(data, invalid="unk")
    assert ours == _reference(data, unk=True)
    assert r["stats"]["invalid_unk"] == 2
    ours, r = _ours(data, invalid="skip-record")
    assert [i for i, _ in ours] == ["b", "d"] and r["stats"]["invalid_skipped"] == 2
    err = parse_block(b">ok\nMKV\n>bad one\nMK\nV\r\n  VJL\n>ok2\nAC\n")["error"]
    assert err[:2] == (6, "bad") and err[2].startswith("invalid character 'J'")
    hint = "(use --invalid unk or skip-record to accept it)"
    assert parse_block(b">s\nMK*V*\n")["error"] == (2, "s", f"invalid character '*' {hint}")
    assert parse_block(b">u\nMK\xc3\xa9\n")["error"] == (
        2,
        "u",
        f"invalid character '\\\\xc3' {hint}",
    )


@pytest.mark.parametrize(
    "header, field",
    [("n=abc Tax=x", "n='abc'"), ("TaxID=12x3", "TaxID='12x3'"), ("OS=h OX= GN=g", "OX=''")],
)
def test_non_numeric_integer_field_names_its_record_and_line(header, field):
    data = f">a n=1 TaxID=9\nMKV\n>b\nMK\nV\n>bad {header}\nMKV\n>c n=2\nAC\n".encode()
    line, rec_id, what = parse_block(data)["error"]
    assert (line, rec_id) == (6, "bad") and what == f"{field} is not a whole number"


def test_integer_fields_beyond_the_fast_parser_still_cast():
    data = b">a n=-7\nMKV\n>b n=1234567890123456789\nMK\n"
    r = parse_block(data, valid_fraction=0, test_fraction=0)
    assert r["error"] is None and r["meta"][0]["n"].to_pylist() == [-7, 1234567890123456789]


def test_header_fields_equal_parse_header():
    titles = [
        "UniRef50_A0A5A9P0L4 Peptidyl-prolyl isomerase n=1 Tax=Triplophysa tibetana "
        "TaxID=1572043 RepID=A0A5A9P0L4_9TELE",
        "sp|P69905|HBA_HUMAN Hemoglobin subunit alpha OS=Homo sapiens OX=9606 GN=HBA1 PE=1 SV=2",
        "x n=1 Tax=A n=2 Tax=B",  # repeated keys: the first one counts
        "y  n=5 TaxID=007 Tax= RepID=q",
        "z n=3",
        "plain",
        " leading space",
        "UniRef_x not a cluster",
        "UniRef90_ trailing",
        "tab\tseparated OS=Homo sapiens OX=9606",
        "tab2\tOS=Mus musculus",
        " \t spaced   id n=2",
        "sp|P1|X_HUMAN\tkinase GN=abc",
    ]
    data = "".join(f">{t}\nMKV\n" for t in titles).encode()
    _, r = _ours(data)
    for row, title in zip(r["meta"][0].to_pylist(), titles):
        for key, value in parse_header(title).items():
            assert row[key] == value, (title, key)
        assert row["cluster_id"] == parse_header(title).get("cluster_id")


def test_hashes_and_splits_equal_the_arrow_reference():
    ids = ["UniRef50_P1", "sp|Q9|X_H", "tr|A||b", "sp||x", "UniRef_1", "UniRef9_sp|Z|W", "a"]
    ids += [f"UniRef100_P{k}" for k in range(500)] + [f"sp|P{k}|N_HUMAN" for k in range(500)]
    data = "".join(f">{i} d\nMKV\n" for i in ids).encode()
    r = parse_block(data, valid_fraction=0.3, test_fraction=0.3, seed=11)
    arr = pa.array(ids)
    want = assign_splits(split_keys(arr), 0.3, 0.3, 11)
    got = np.full(len(ids), DROPPED)
    order = {i: k for k, i in enumerate(ids)}
    for s in range(3):
        for rid in r["meta"][s].column("id").to_pylist():
            got[order[rid]] = s
    assert (got == want).all() and len(set(want.tolist())) == 3
    kept = [k for k in range(len(ids)) if got[k] != DROPPED]
    np.testing.assert_array_equal(
        np.sort(r["id_hashes"]), np.sort(hash_strings(arr, seed=0x1D)[kept])
    )


@pytest.mark.parametrize("header", [b">", b">   ", b">\t\r", b"> \t \r"])
def test_a_header_without_an_id_is_refused_with_its_line(header):
    data = b">a\nMKV\n" + header + b"\nMKV\n>b\nAC\n"
    assert parse_block(data)["error"] == (
        3,
        "",
        "header line has no id (the id is the first word after '>')",
    )
    assert parse_block(b">a\nMK\n" + header)["error"][:2] == (3, "")  # no line end after it


def test_prepare_names_the_line_of_a_header_without_an_id(tmp_path, capsys):
    from proteinperf.cli import main

    fasta = tmp_path / "x.fa"
    fasta.write_bytes(b">a\nMKV\n>b\nMK\n>\nMKV\n")
    assert main(["prepare", str(fasta), "--out", str(tmp_path / "c"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"proteinperf prepare: error: {fasta}:5: {NO_ID}\n"
    assert not (tmp_path / "c").exists()
