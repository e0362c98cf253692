import csv
import filecmp

import h5py
import numpy as np
import pytest
import torch
from helpers import SEQUENCES, TINY, variant_model, write_fasta

from proteinperf.checkpoint import load_model
from proteinperf.cli import main
from proteinperf.inference.common import length_sorted_batches
from proteinperf.inference.embed import embed_fasta, embed_sequences, resolve_layers
from proteinperf.inference.shards import shard_dir
from proteinperf.inference.writers import NameAllocator

D = TINY["d_model"]  # embedding width


def test_plan_batches_respects_budget_and_covers_all():
    lengths = [5, 100, 7, 30, 30, 2, 250]
    batches = length_sorted_batches(lengths, toks_per_batch=70)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        width = max(lengths[i] for i in batch) + 2
        assert len(batch) == 1 or len(batch) * width <= 70
    assert [6] in batches and [1] in batches  # longer than the budget: alone


def test_resolve_layers():
    assert resolve_layers([-1], 6) == [6]
    assert resolve_layers([0, -7, 3, -3], 6) == [0, 3, 4]
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        resolve_layers([7], 6)
    with pytest.raises(ValueError, match="-8"):
        resolve_layers([-8], 6)


@pytest.mark.parametrize("files", [True, False])
def test_names_are_unique_and_safe(files):
    allocate = NameAllocator(files=files)
    ids = ["a/b", "a/b", "a_b", "x", "X", ".", "", "../etc", "ok-id.1", "_index"]
    names = [allocate(i) for i in ids]
    folded = [n.lower() for n in names] if files else names
    assert len(set(folded)) == len(names)
    assert all("/" not in n and not n.startswith(".") and n for n in names)
    assert names[8] == "ok-id.1"
    assert names[3] == "x"
    assert (names[4] != "X") if files else (names[4] == "X")  # case-insensitive file systems
    again = NameAllocator(files=files)
    assert [again(i) for i in ids] == names  # deterministic


@pytest.mark.parametrize("files", [True, False])
@pytest.mark.parametrize("length", [89, 95, 100, 101, 111, 250])
def test_long_ids_get_a_name_at_once(files, length):
    # Ids of 90-100 characters that need renaming, and any id over 100, once spun for ever.
    allocate = NameAllocator(files=files)
    for record_id in ("A" * length, "sp|" + "B" * (length - 3), "/" * length, "." * length):
        name = allocate(record_id)
        assert 0 < len(name) <= 100 and not name.startswith(".") and "/" not in name
        assert allocate(record_id) != name  # a repeated id still gets its own name


@pytest.mark.parametrize("name", ["favor_relu", "favor_softmax", "softmax", "causal"])
def test_alone_equals_padded_batch(name):
    model = variant_model(name)
    seqs = list(SEQUENCES.values())
    batch = embed_sequences(model, seqs, [0, 1, 2], ["mean", "per-token", "bos"])
    for seq, together in zip(seqs, batch):
        alone = embed_sequences(model, [seq], [0, 1, 2], ["mean", "per-token", "bos"])[0]
        for kind in ("representations", "mean_representations", "bos_representations"):
            for layer in (0, 1, 2):
                torch.testing.assert_close(
                    together[kind][layer], alone[kind][layer], atol=1e-5, rtol=1e-4
                )
        assert together["representations"][2].shape == (len(seq), D)


def test_mean_is_over_residues_only():
    model = variant_model("favor_relu")
    out = embed_sequences(model, ["MKTAYIAK"], [2], ["mean", "per-token", "bos"])[0]
    per_token = out["representations"][2]
    assert per_token.shape == (8, D)
    torch.testing.assert_close(out["mean_representations"][2], per_token.mean(0))
    full = model(torch.tensor([[0, *model_tokens("MKTAYIAK"), 2]]), repr_layers=[2])
    torch.testing.assert_close(
        out["bos_representations"][2], full["representations"][2][0, 0].detach()
    )


def model_tokens(seq):
    from proteinperf.data.alphabet import get_alphabet

    return get_alphabet().encode(seq)


def test_h5_layout_order_and_rerun_identical(tmp_path, checkpoints, fasta):
    model, _ = load_model(checkpoints["favor_softmax"])
    outs = []
    for run in range(2):
        out = tmp_path / f"run{run}.h5"
        embed_fasta(
            model,
            fasta,
            out,
            layers=[0, -1],
            include=["mean", "per-token", "bos"],
            toks_per_batch=40,
            quiet=True,
        )
        outs.append(out)
    assert filecmp.cmp(outs[0], outs[1], shallow=False)
    with h5py.File(outs[0]) as f:
        ids = [i.decode() for i in f["_index/ids"][:]]
        assert ids == list(SEQUENCES)
        group = f["seq1"]
        assert group.attrs["id"] == "seq1" and group.attrs["length"] == 22
        assert set(group["representations"]) == {"0", "2"}
        assert group["representations/2"].shape == (22, D)
        np.testing.assert_allclose(
            group["mean_representations/2"][:], group["representations/2"][:].mean(0), atol=1e-6
        )
        assert group["bos_representations/0"].shape == (D,)
    # a different batch size gives the same vectors
    other = tmp_path / "other.h5"
    embed_fasta(
        model, fasta, other, layers=[-1], include=["per-token"], toks_per_batch=1, quiet=True
    )
    with h5py.File(outs[0]) as a, h5py.File(other) as b:
        for rid in SEQUENCES:
            np.testing.assert_allclose(
                a[f"{rid}/representations/2"][:], b[f"{rid}/representations/2"][:], atol=1e-5
            )


def test_npz(tmp_path, checkpoints, fasta):
    model, _ = load_model(checkpoints["favor_relu"])
    out = tmp_path / "e.npz"
    embed_fasta(model, fasta, out, fmt="npz", include=["mean", "bos"], quiet=True)
    with np.load(out) as z:
        assert list(z["_index/ids"]) == list(SEQUENCES)
        assert z["seq2/mean_representations/2"].shape == (D,)
        assert "seq2/representations/2" not in z


def test_pt_dir_unsafe_and_duplicate_ids(tmp_path, checkpoints):
    records = [
        ("sp|P1|A/B", "MKT"),
        ("sp|P1|A/B", "MKTW"),
        ("dup", "AAA"),
        ("dup", "CCC"),
        ("Dup", "GGG"),
        ("..", "WW"),
        ("index.csv", "MM"),
    ]
    expected_ids = ["sp|P1|A/B", "sp|P1|A/B_2", "dup", "dup_2", "Dup", "..", "index.csv"]
    fasta = tmp_path / "ids.fasta"
    fasta.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records))
    model, _ = load_model(checkpoints["favor_relu"])
    out = tmp_path / "pt"
    options = dict(fmt="pt-dir", include=["mean", "per-token", "bos"], quiet=True)
    embed_fasta(model, fasta, out, on_duplicate="suffix", **options)
    with open(out / "index.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == expected_ids
    files = [r["file"] for r in rows]
    assert len({f.lower() for f in files}) == len(files)
    assert sorted(p.name for p in out.iterdir()) == sorted(files + ["index.csv"])
    for rid, (_, seq), row in zip(expected_ids, records, rows):
        data = torch.load(out / row["file"], weights_only=True)
        assert data["label"] == rid
        assert data["representations"][2].shape == (len(seq), D)
        assert set(data) == {
            "label",
            "representations",
            "mean_representations",
            "bos_representations",
        }
    # rerun replaces the earlier output, byte for byte the same
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    embed_fasta(model, fasta, out, on_duplicate="suffix", **options)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_pt_dir_refuses_foreign_directory(tmp_path, checkpoints, fasta):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    model, _ = load_model(checkpoints["favor_relu"])
    with pytest.raises(ValueError, match="not a pt-dir"):
        embed_fasta(model, fasta, out, fmt="pt-dir", quiet=True)
    assert (out / "precious.txt").exists()


def test_interrupted_run_leaves_no_output(tmp_path, checkpoints):
    fasta = write_fasta(tmp_path / "bad.fasta", {"ok": "MKT"})
    with open(fasta, "a") as f:
        f.write(">bad\nMK1T\n")
    out = tmp_path / "out.h5"
    code = main(["embed", str(checkpoints["favor_relu"]), fasta, str(out), "--quiet"])
    assert code == 2
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.fasta"]


def test_learned_positions_need_truncate(tmp_path, checkpoints, capsys):
    fasta = write_fasta(tmp_path / "long.fasta", {"long": "M" * 30})
    out = tmp_path / "out.h5"
    assert main(["embed", str(checkpoints["learned"]), fasta, str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "max_len 16" in err and "--truncate 14" in err and len(err.strip().splitlines()) == 1
    assert (
        main(
            [
                "embed",
                str(checkpoints["learned"]),
                fasta,
                str(out),
                "--quiet",
                "--truncate",
                "14",
                "--include",
                "per-token",
            ]
        )
        == 0
    )
    with h5py.File(out) as f:
        assert f["long/representations/2"].shape == (14, D)


def test_long_sequence_no_limit_for_favor(tmp_path, checkpoints):
    model, _ = load_model(checkpoints["favor_relu"])
    seq = ("MKTAYIAKQRQISFVKSHFSRQ" * 200)[:4000]
    out = embed_sequences(model, [seq], [2], ["mean"])[0]
    assert torch.isfinite(out["mean_representations"][2]).all()


def test_bf16_close_to_fp32():
    model = variant_model("favor_relu")
    seqs = list(SEQUENCES.values())
    fp32 = embed_sequences(model, seqs, [2], ["mean"])
    bf16 = embed_sequences(model, seqs, [2], ["mean"], precision="bf16")
    for a, b in zip(fp32, bf16):
        assert b["mean_representations"][2].dtype == torch.float32
        torch.testing.assert_close(
            a["mean_representations"][2], b["mean_representations"][2], atol=0.1, rtol=0.05
        )


def test_invalid_residues_error_or_skip(tmp_path, checkpoints, capsys):
    fasta = write_fasta(tmp_path / "bad.fasta", {"ok": "MKT", "bad": "MK1T"})
    out = tmp_path / "out.h5"
    ckpt = str(checkpoints["favor_relu"])
    assert main(["embed", ckpt, fasta, str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.fasta:4" in err and "'1'" in err
    assert main(["embed", ckpt, fasta, str(out), "--quiet", "--invalid", "skip-record"]) == 0
    with h5py.File(out) as f:
        assert [i.decode() for i in f["_index/ids"][:]] == ["ok"]


def test_unknown_layer_is_one_line(tmp_path, checkpoints, fasta, capsys):
    out = tmp_path / "out.h5"
    assert main(["embed", str(checkpoints["favor_relu"]), fasta, str(out), "--layers", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "proteinperf embed: error: layer 5 does not exist: this model has layers "
        "0..2 (0 = token embeddings) or -3..-1 counted from the end"
    )
    assert not out.exists()


def _full_disk_after(calls: int):
    """A stand-in for a write that finds the disk full after ``calls`` successful ones."""
    import errno

    count = [0]

    def check():
        count[0] += 1
        if count[0] > calls:
            raise OSError(errno.ENOSPC, "No space left on device")

    return check


@pytest.mark.parametrize("fmt", ["h5", "pt-dir"])
@pytest.mark.parametrize("bulk", [False, True])
def test_full_disk_while_merging_is_one_line_and_leaves_no_output(
    tmp_path, checkpoints, fasta, capsys, monkeypatch, fmt, bulk
):
    """The disk fills up while the output is written: one line naming the output, nothing
    left but, on the bulk path, the shards (for --resume once there is room). HDF5 used to
    crash the process at exit after a failed write, and torch.save to report it as a
    RuntimeError without the path."""
    import builtins

    from proteinperf.inference import runner, writers

    monkeypatch.setattr(runner, "SMALL_INPUT_BYTES", -1 if bulk else runner.SMALL_INPUT_BYTES)

    real_open = builtins.open
    full = _full_disk_after(5)

    def tight_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode:
            write = f.write
            f.write = lambda data: full() or write(data)
        return f

    if fmt == "h5":  # HDF5 writes through positioned writes
        import os

        real_pwrite = os.pwrite
        monkeypatch.setattr(os, "pwrite", lambda *args: full() or real_pwrite(*args))
    else:
        monkeypatch.setattr(writers, "open", tight_open, raising=False)
    out = tmp_path / f"e.{fmt}"
    argv = ["embed", str(checkpoints["favor_relu"]), fasta, str(out), "--format", fmt]
    assert main([*argv, "--quiet"]) == 2
    assert capsys.readouterr().err == f"proteinperf embed: error: {out}: No space left on device\n"
    left = sorted(p.name for p in tmp_path.iterdir() if out.name in p.name)
    assert left == ([f".{out.name}.shards"] if bulk else [])
    monkeypatch.undo()
    assert main([*argv, "--quiet", *(["--resume"] if bulk else [])]) == 0 and out.exists()


@pytest.mark.parametrize("bulk", [False, True])
def test_merge_without_room_is_refused_first_and_resumes(
    tmp_path, checkpoints, fasta, capsys, monkeypatch, bulk
):
    import collections
    import shutil

    from proteinperf.inference import runner

    monkeypatch.setattr(runner, "SMALL_INPUT_BYTES", -1 if bulk else runner.SMALL_INPUT_BYTES)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 4096, 4096))
    ckpt = str(checkpoints["favor_relu"])
    out = tmp_path / "e.h5"
    assert main(["embed", ckpt, fasta, str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"proteinperf embed: error: {out}: No space left on device: it needs")
    assert err.count("\n") == 1
    # only the bulk path has shards to resume from
    assert err.endswith("rerun with --resume\n") == bulk and err.endswith(" free\n") != bulk
    assert not out.exists() and not list(tmp_path.glob(".e.h5.tmp*"))
    assert shard_dir(out).exists() == bulk
    monkeypatch.undo()
    assert main(["embed", ckpt, fasta, str(out), "--quiet", *(["--resume"] if bulk else [])]) == 0
    assert out.is_file() and not list(tmp_path.glob(".e.h5*"))


def test_h5_writer_survives_a_full_disk_at_any_write(tmp_path, monkeypatch):
    """Whichever HDF5 write finds the disk full (data, metadata, the index at close), the
    writer raises that OSError and the process goes on: HDF5 never sees the failure (it
    cannot recover from one, and used to crash the process)."""
    import errno
    import os

    from proteinperf.inference.writers import H5Writer

    records = [
        {"length": 5, "mean_representations": {1: torch.rand(D)}, "representations": {1: x}}
        for x in torch.rand(6, 5, D)
    ]
    real_pwrite = os.pwrite
    budget = [0]

    def pwrite(fd, data, offset):
        budget[0] -= 1
        if budget[0] < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    outcomes = set()
    for writes in range(0, 130, 3):  # (6 records: ~12 writes, then ~110 as the file closes)
        budget[0] = writes
        path = tmp_path / f"f{writes}.h5"
        writer = H5Writer(path, {"layers": [1]})
        names = [f"r{i}" for i in range(len(records))]
        try:
            for name, record in zip(names, records):
                writer.add(name, name, record)
            writer.close(names, names)
            outcomes.add("complete")
        except OSError as err:
            outcomes.add("failed")
            assert err.errno == errno.ENOSPC
            writer.abort()
    assert {"failed", "complete"} <= outcomes
    budget[0] = 10**9
    ok = tmp_path / "ok.h5"  # and HDF5 still works afterwards
    writer = H5Writer(ok, {})
    writer.add("a", "a", records[0])
    writer.close(["a"], ["a"])
    with h5py.File(ok) as f:
        np.testing.assert_array_equal(
            f["a/representations/1"][:], records[0]["representations"][1].numpy()
        )


def test_h5_writer_writes_what_h5pys_own_calls_write(tmp_path):
    """The writer's low-level calls make the same file, byte for byte, as create_group,
    attrs[...] = and create_dataset (the layout readers know), names ASCII or not."""
    from proteinperf.inference.writers import H5Writer

    g = torch.Generator().manual_seed(0)
    records = {}
    for i, name in enumerate(["a", "sp|P1|X_Y", "é è", "b"]):
        n = 3 + i
        records[name] = {
            "length": n,
            "representations": {
                0: torch.randn(n, D, generator=g),
                2: torch.randn(n, D, generator=g),
            },
            "mean_representations": {2: torch.randn(D, generator=g)},
            "bos_representations": {0: torch.randn(D, generator=g)},
        }
    meta = {"layers": [0, 2], "include": ["mean", "per-token", "bos"], "checkpoint": "m.pt"}
    ids, names = [f"id {k}" for k in records], list(records)
    writer = H5Writer(tmp_path / "ours.h5", meta)
    for name, record_id in zip(names, ids):
        writer.add(name, record_id, records[name])
    writer.close(ids, names)
    # (through a Python file object, as the writer's: the sec2 driver ends the file otherwise)
    with (
        open(tmp_path / "h5py.h5", "w+b") as raw,
        h5py.File(raw, "w", libver="earliest", track_order=False) as f,
    ):
        for key, value in meta.items():
            f.attrs[key] = value
        for name, record_id in zip(names, ids):
            group = f.create_group(name)
            group.attrs["id"] = record_id
            group.attrs["length"] = records[name]["length"]
            for kind in ("representations", "mean_representations", "bos_representations"):
                for layer, tensor in sorted(records[name][kind].items()):
                    group.create_dataset(f"{kind}/{layer}", data=tensor.numpy(), track_times=False)
        strings = h5py.string_dtype()
        for key, values in (("ids", ids), ("keys", names)):
            f.create_dataset(f"_index/{key}", data=np.array(values, dtype=object), dtype=strings,
                             track_times=False)  # fmt: skip
    assert (tmp_path / "ours.h5").read_bytes() == (tmp_path / "h5py.h5").read_bytes()
