import numpy as np
import pytest
from Bio.SeqIO.FastaIO import SimpleFastaParser
from helpers import SAMPLE, write

from proteinperf.data import Alphabet, FastaFormatError, get_alphabet, parse_header, read_fasta
from proteinperf.data.blocks import parse_block
from proteinperf.data.fasta import normalise, open_binary, record_blocks

ODD = ">a desc one\nMKV\nla\n\n>b\r\nAC DE\r\nFG*\r\n>empty\n>c n=3 Tax=X y TaxID=7 RepID=Q\nwy\n"


def test_alphabet_matches_fair_esm_token_by_token():
    import esm

    ref = esm.data.Alphabet.from_architecture("ESM-1b")
    a = get_alphabet()
    assert a.tokens == ref.all_toks and len(a) == len(ref) == 33
    for tok in ref.all_toks:
        assert a.tok_to_idx[tok] == ref.get_idx(tok)
    assert (a.cls_idx, a.padding_idx, a.eos_idx, a.unk_idx, a.mask_idx) == (
        ref.cls_idx,
        ref.padding_idx,
        ref.eos_idx,
        ref.unk_idx,
        ref.mask_idx,
    )
    assert a.encode_framed("MKV") == [0, *[ref.get_idx(c) for c in "MKV"], 2]
    assert a.decode(a.encode("ACDXW")) == "ACDXW"
    assert (
        a.lut.dtype == np.uint8 and a.lut[ord("a")] == a.tok_to_idx["A"] and a.lut[ord("J")] == 255
    )
    assert [a.tokens[i] for i in a.residue_token_ids] == list("ACDEFGHIKLMNPQRSTVWY")
    assert isinstance(a, Alphabet) and get_alphabet() is a


def _bio(path):
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    import bz2
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix, open)
    with opener(path, "rt", newline="") as f:
        return [
            (t.split(None, 1)[0] if t.strip() else "", normalise(s))
            for t, s in SimpleFastaParser(f)
        ]


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".xz"])
@pytest.mark.parametrize("text", ["sample", "odd", "crlf", "wide"])
def test_reader_equals_biopython(tmp_path, suffix, text):
    seqs = SAMPLE.read_text()
    data = {
        "sample": seqs,
        "odd": ODD,
        "crlf": seqs.replace("\n", "\r\n"),
        "wide": "".join(f">{t}\n{s}\n" for t, s in SimpleFastaParser(open(SAMPLE))),
    }[text]
    path = write(tmp_path / f"x.fasta{suffix}", data)
    ours = [(r.id, r.sequence) for r in read_fasta(path)]
    assert ours == _bio(path)


def test_block_parser_equals_reader(tmp_path):
    for data in (SAMPLE.read_bytes(), ODD.encode(), SAMPLE.read_bytes().replace(b"\n", b"\r\n")):
        path = write(tmp_path / "x.fa", data)
        r = parse_block(data, valid_fraction=0, test_fraction=0)
        recs = [x for x in read_fasta(path) if x.sequence]
        assert r["meta"][0].column("id").to_pylist() == [x.id for x in recs]
        ends = np.cumsum(r["lengths"][0])
        toks = r["tokens"][0]
        seqs = [get_alphabet().decode(toks[e - n : e]) for e, n in zip(ends, r["lengths"][0])]
        assert seqs == [x.sequence for x in recs]
        for row, x in zip(r["meta"][0].to_pylist(), recs):
            fields = parse_header(_title(data, x.id))
            for k, v in fields.items():
                assert row[k] == v, (k, row[k], v)


def _title(data: bytes, rec_id: str) -> str:
    for line in data.decode().splitlines():
        if line.startswith(">") and line[1:].split(None, 1)[0] == rec_id:
            return line[1:]
    raise KeyError(rec_id)


def test_header_fields():
    f = parse_header(
        "UniRef50_A0A5A9P0L4 Peptidyl-prolyl cis-trans isomerase n=1 "
        "Tax=Triplophysa tibetana TaxID=1572043 RepID=A0A5A9P0L4_9TELE"
    )
    assert f == {
        "id": "UniRef50_A0A5A9P0L4",
        "description": "Peptidyl-prolyl cis-trans isomerase",
        "n": 1,
        "tax": "Triplophysa tibetana",
        "taxid": 1572043,
        "repid": "A0A5A9P0L4_9TELE",
        "cluster_id": "UniRef50_A0A5A9P0L4",
    }
    f = parse_header(
        "sp|P69905|HBA_HUMAN Hemoglobin subunit alpha OS=Homo sapiens OX=9606 GN=HBA1 PE=1 SV=2"
    )
    assert f == {
        "id": "sp|P69905|HBA_HUMAN",
        "description": "Hemoglobin subunit alpha",
        "os": "Homo sapiens",
        "ox": 9606,
        "gn": "HBA1",
    }


def test_ids_skip_leading_blanks_and_end_at_a_space_or_tab():
    assert parse_header("   P1 kinase OS=Homo sapiens") == {
        "id": "P1",
        "description": "kinase",
        "os": "Homo sapiens",
    }
    assert parse_header("P2\tkinase OX=9606") == {"id": "P2", "description": "kinase", "ox": 9606}
    assert parse_header("\tP3\tOS=Mus") == {"id": "P3", "description": "", "os": "Mus"}


@pytest.mark.parametrize("header, line", [(">", 3), (">   ", 3), (">\t\r", 3), ("> \t ", 3)])
def test_a_header_without_an_id_is_refused_with_its_line(tmp_path, header, line):
    path = write(tmp_path / "h.fa", f">a\nMKV\n{header}\nMKV\n>b\nAC\n")
    with pytest.raises(FastaFormatError, match=rf"h.fa:{line}: header line has no id") as e:
        list(read_fasta(path))
    assert "\n" not in str(e.value)


def test_invalid_policies(tmp_path):
    path = write(tmp_path / "j.fa", ">ok\nMKV\n>bad one\nMK\nVJL\n>ok2\nAC\n")
    with pytest.raises(FastaFormatError, match=r"j.fa:5: record 'bad'.*'J'") as e:
        list(read_fasta(path))
    assert "\n" not in str(e.value)
    assert [r.id for r in read_fasta(path, invalid="skip-record")] == ["ok", "ok2"]
    assert get_alphabet().encode([r for r in read_fasta(path, invalid="unk")][1].sequence)[3] == 3


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"\n\n  \n", "empty file"),
        (b"MKVLA\nMKV\n", "no '>' header"),
        (b"@r1\nACGT\n+\nIIII\n", "FASTQ"),
        (b"LOCUS       X 10 bp\n", "GenBank"),
        (bytes(range(256)) * 8, "binary"),
    ],
)
def test_bad_inputs_one_line(tmp_path, data, message):
    path = write(tmp_path / "bad.fa", data)
    with pytest.raises(FastaFormatError, match=message) as e:
        list(read_fasta(path))
    assert "\n" not in str(e.value) and "bad.fa" in str(e.value)


def test_truncated_gzip(tmp_path):
    path = write(tmp_path / "t.fa.gz", SAMPLE.read_bytes())
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(FastaFormatError, match="truncated or corrupt"):
        list(read_fasta(path))


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
@pytest.mark.parametrize("block_size", [1, 7, 64, 1 << 20])
def test_record_blocks_end_where_records_do(tmp_path, suffix, block_size):
    """Blocks join back into the file; every block but the first starts a record and none
    cuts one (a record longer than the block size stays whole)."""
    text = ">a\nMKV\n>b x>y\n" + "W" * 100 + "\n\n>c\nAC\n>d\nE"
    path = write(tmp_path / f"in.fasta{suffix}", text)
    with open_binary(path) as stream:
        blocks = list(record_blocks(stream, block_size, path))
    assert b"".join(blocks).decode() == text
    assert all(b.startswith(b">") for b in blocks)
    assert all(b.endswith(b"\n") for b in blocks[:-1])
    if block_size == 1:  # each read ends a record: one block per record
        assert len(blocks) == 4


def test_record_blocks_of_a_truncated_file_is_one_error(tmp_path):
    path = write(tmp_path / "in.fasta.gz", ">a\n" + "MKV" * 5000 + "\n")
    path.write_bytes(path.read_bytes()[:-20])
    with open_binary(path) as stream, pytest.raises(FastaFormatError, match="truncated or corrupt"):
        list(record_blocks(stream, 64, path))
