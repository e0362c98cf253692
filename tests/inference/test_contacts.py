import esm
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import write_fasta

from proteinperf.analysis.attention_maps import attention_maps, frame_sequence
from proteinperf.checkpoint import save_model
from proteinperf.cli import main
from proteinperf.data.alphabet import get_alphabet
from proteinperf.inference.contacts import predict_contacts, top_contacts
from proteinperf.interop.esm import contact_regression_of, performer_from_esm_model

PROTEINS = {
    "p1": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ",
    "p2": "KALTARQQEVFDLIRD",
    "p3": "GSHMLEDPVDAFQWWYCPNMSEQ",
}


@pytest.fixture(scope="module")
def tiny_esm2():
    """A small random ESM-2 whose attention and regression are far from uniform."""
    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = esm.model.esm2.ESM2(num_layers=2, embed_dim=32, attention_heads=4, alphabet=alphabet)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj.weight" in name or "k_proj.weight" in name:
                p.mul_(6.0)
        model.contact_head.regression.weight.normal_(0.0, 3.0)
    return model.eval(), alphabet


def test_exact_contacts_equal_fair_esm(tiny_esm2):
    esm_model, alphabet = tiny_esm2
    ours = performer_from_esm_model(esm_model)
    regression = contact_regression_of(esm_model)
    _, _, tokens = alphabet.get_batch_converter()(list(PROTEINS.items()))  # padded batch
    with torch.no_grad():
        expected = esm_model.predict_contacts(tokens)  # (B, Lmax, Lmax)
    for row, seq in enumerate(PROTEINS.values()):
        got = predict_contacts(ours, seq, regression)
        want = expected[row, : len(seq), : len(seq)]
        assert got.shape == (len(seq), len(seq))
        assert want.std() > 0.05  # a map with structure, not a constant
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_favor_contacts_use_the_implicit_favor_maps(tiny_esm2):
    esm_model, alphabet = tiny_esm2
    ours = performer_from_esm_model(esm_model, attention="favor_softmax", nb_features=64, seed=1)
    regression = contact_regression_of(esm_model)
    seq = PROTEINS["p1"]
    maps = attention_maps(ours, frame_sequence(seq, get_alphabet()))
    # fair-esm's own head on the materialised FAVOR+ matrices (layers, heads, T, T)
    head = esm.modules.ContactPredictionHead(8, True, True, eos_idx=alphabet.eos_idx)
    head.regression.load_state_dict(regression)
    tokens = frame_sequence(seq, get_alphabet())
    with torch.no_grad():
        want = head(tokens, maps.favor.unsqueeze(0))[0]
    got = predict_contacts(ours, seq, regression)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    exact = predict_contacts(performer_from_esm_model(esm_model), seq, regression)
    assert (got - exact).abs().max() > 1e-4  # FAVOR+ maps, not the exact ones


def test_top_contacts():
    probs = torch.zeros(10, 10)
    probs[0, 9] = probs[9, 0] = 0.9
    probs[1, 3] = probs[3, 1] = 0.99  # separation 2: left out
    probs[2, 8] = probs[8, 2] = 0.5
    i, j, p = top_contacts(probs, n=2, min_separation=6)
    assert i.tolist() == [1, 3] and j.tolist() == [10, 9]
    np.testing.assert_allclose(p, [0.9, 0.5])
    assert len(top_contacts(probs)[0]) == 10


@pytest.fixture(scope="module")
def contact_checkpoint(tiny_esm2, tmp_path_factory):
    esm_model, _ = tiny_esm2
    folder = tmp_path_factory.mktemp("contacts")
    extra = {"contact_regression": contact_regression_of(esm_model)}
    with_head = save_model(folder / "esm.ckpt", performer_from_esm_model(esm_model), extra=extra)
    favor = performer_from_esm_model(esm_model, attention="favor_relu", nb_features=16)
    return with_head, save_model(folder / "favor.ckpt", favor)


@pytest.mark.slow
def test_cli_writes_maps_top_l_and_plots(tmp_path, tiny_esm2, contact_checkpoint, capsys):
    ckpt, _ = contact_checkpoint
    fasta = write_fasta(tmp_path / "in.fasta", {**PROTEINS, "odd/id": "MKTAYIAKQR"})
    out = tmp_path / "maps"
    assert main(["contacts", str(ckpt), fasta, str(out), "--plot", "--quiet"]) == 0
    index = pd.read_csv(out / "index.csv")
    assert index["id"].tolist() == [*PROTEINS, "odd/id"]
    esm_model, _ = tiny_esm2
    regression = contact_regression_of(esm_model)
    for _rid, name, length in index.itertuples(index=False):
        probs = np.load(out / f"{name}.npz")["probabilities"]
        assert probs.shape == (length, length)
        assert (out / f"{name}.png").stat().st_size > 0
        top = pd.read_csv(out / f"{name}.top.csv")
        assert list(top.columns) == ["i", "j", "p"]
        assert len(top) == min(length, (length - 6) * (length - 5) // 2)
        assert ((top["j"] - top["i"]) >= 6).all() and top["p"].is_monotonic_decreasing
        np.testing.assert_allclose(top["p"], probs[top["i"] - 1, top["j"] - 1], rtol=1e-5)
    seq = PROTEINS["p2"]
    want = predict_contacts(performer_from_esm_model(esm_model), seq, regression).numpy()
    assert (
        main(["contacts", str(ckpt), fasta, str(out), "--format", "csv", "--quiet"]) == 2
    )  # exists
    assert (
        main(["contacts", str(ckpt), fasta, str(out), "--format", "csv", "--quiet", "--overwrite"])
        == 0
    )
    np.testing.assert_allclose(np.loadtxt(out / "p2.csv", delimiter=","), want, atol=1e-5)
    assert not (out / "p2.npz").exists()  # the earlier output was replaced whole


def test_cli_contact_head_missing_or_borrowed(tmp_path, contact_checkpoint, capsys):
    with_head, favor = contact_checkpoint
    fasta = write_fasta(tmp_path / "in.fasta", PROTEINS)
    out = tmp_path / "maps"
    assert main(["contacts", str(favor), fasta, str(out)]) == 2
    err = capsys.readouterr().err
    assert "no contact head" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    args = ["contacts", str(favor), fasta, str(out), "--contact-head", str(with_head), "--quiet"]
    assert main(args) == 0
    assert np.load(out / "p1.npz")["probabilities"].shape == (33, 33)


def test_cli_reads_the_whole_input_before_the_first_map(
    tmp_path, contact_checkpoint, capsys, monkeypatch
):
    import gzip

    import proteinperf.inference.contacts as contacts

    computed = []
    real = contacts.predict_contacts
    monkeypatch.setattr(
        contacts, "predict_contacts", lambda *a, **k: computed.append(1) or real(*a, **k)
    )
    with_head, _ = contact_checkpoint
    records = "".join(f">p{i}\n{PROTEINS['p1']}\n" for i in range(2000))
    fasta = tmp_path / "in.fasta.gz"
    whole = gzip.compress(records.encode(), mtime=0)
    fasta.write_bytes(whole[: len(whole) - 40])  # cut off: the last records cannot be read
    out = tmp_path / "maps"
    assert main(["contacts", str(with_head), str(fasta), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt compressed file" in err and err.count("\n") == 1
    assert computed == [] and not out.exists()


def test_a_contact_head_with_nan_is_refused(tmp_path, tiny_esm2, capsys):
    esm_model, _ = tiny_esm2
    regression = contact_regression_of(esm_model)
    regression["weight"][0, 3] = float("nan")
    ckpt = save_model(
        tmp_path / "nan.ckpt",
        performer_from_esm_model(esm_model),
        extra={"contact_regression": regression},
    )
    fasta = write_fasta(tmp_path / "in.fasta", PROTEINS)
    assert main(["contacts", str(ckpt), fasta, str(tmp_path / "maps"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "contact_regression.weight holds NaN or infinite values" in err
    assert err.count("\n") == 1 and not (tmp_path / "maps").exists()
