"""Recurrent decoding equals the full causal forward; sampling is valid and reproducible."""

import pytest
import torch
from helpers import TINY, variant_model, write_fasta

from proteinperf.checkpoint import save_model
from proteinperf.cli import main
from proteinperf.data.alphabet import STANDARD_AMINO_ACIDS, get_alphabet
from proteinperf.errors import InputError
from proteinperf.inference.generate import filter_logits, generate
from proteinperf.inference.likelihood import causal_log_probs
from proteinperf.model import ModelConfig, PerformerLM

ATTENTIONS = ("favor_softmax", "favor_relu", "softmax")
LENGTH = 300  # crosses the causal FAVOR kernel's 128-position chunks twice


@pytest.fixture(autouse=True)
def one_thread():
    """Decoding runs many tiny ops: on shared cores, thread hand-offs would dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def causal_model(attention: str, **overrides) -> PerformerLM:
    torch.manual_seed(0)
    model = PerformerLM(
        ModelConfig(**{**TINY, "attention": attention, "causal": True, **overrides})
    )
    with torch.no_grad():  # larger weights: outputs depend visibly on every input
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(10.0)
    return model.eval()


def random_tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 24, (batch, length), generator=g)
    tokens[:, 0] = get_alphabet().cls_idx
    return tokens


def decode_after(model, tokens, prompt: int, state=None, **prompt_options):
    """Logits of a prompt of ``prompt`` positions in one pass (none when 0), then of every
    further position one token at a time: (B, L, V), and the final state."""
    out = []
    if prompt:
        logits, state = model.step(tokens[:, :prompt], state, **prompt_options)
        out.append(logits)
    for i in range(prompt, tokens.shape[1]):
        logits, state = model.step(tokens[:, i : i + 1], state)
        out.append(logits)
    return torch.cat(out, 1), state


@pytest.mark.parametrize("attention", ATTENTIONS)
@torch.inference_mode()
def test_incremental_logits_equal_full_forward(attention):
    model = causal_model(attention)
    tokens = random_tokens(2, LENGTH)
    full = model(tokens)["logits"]

    steps, state = decode_after(model, tokens, 0)
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=0)
    assert int(state.positions[0]) == LENGTH

    # A prompt in one chunked pass (chunks of 64 positions), then token by token.
    rest, _ = decode_after(model, tokens, 150, chunk_size=64)
    torch.testing.assert_close(rest, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("attention", ATTENTIONS)
@torch.inference_mode()
def test_mixed_length_prompts_in_one_batch(attention):
    """Right-padded prompts: each row continues at its own position, as if decoded alone."""
    model = causal_model(attention)
    tokens = random_tokens(2, 40, seed=1)
    lengths = (40, 25)
    mask = torch.arange(40)[None, :] < torch.tensor(lengths)[:, None]
    padded = tokens.masked_fill(~mask, get_alphabet().padding_idx)
    _, state = model.step(padded, padding_mask=mask)
    nxt = torch.tensor([[5], [6]])
    batched, _ = model.step(nxt, state)
    for row, length in enumerate(lengths):
        alone = torch.cat([tokens[row : row + 1, :length], nxt[row : row + 1]], 1)
        expected = model(alone)["logits"][:, -1]
        torch.testing.assert_close(batched[row], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
@torch.inference_mode()
def test_one_token_steps_without_rotary(attention, positional):
    model = causal_model(attention, positional=positional, max_len=64)
    tokens = random_tokens(2, 40)
    steps, _ = decode_after(model, tokens, 10)
    torch.testing.assert_close(steps, model(tokens)["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("attention", [*ATTENTIONS, "favor_softmax_hyp"])  # hyp: not fused
@torch.inference_mode()
def test_one_token_steps_without_qkv_bias_and_final_norm(attention):
    model = causal_model(attention, qkv_bias=False, final_layer_norm=False, lm_head="linear")
    tokens = random_tokens(1, 30)
    steps, _ = decode_after(model, tokens, 5)
    torch.testing.assert_close(steps, model(tokens)["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_fused_token_path_equals_the_layer_by_layer_step(attention):
    """Under inference_mode one-token steps take the fused in-place attention kernels; with
    autograd on, the general ones. Both give the same logits and states, padded rows included."""
    model = causal_model(attention)
    tokens = random_tokens(2, 30)
    keep = torch.ones(2, 30, dtype=torch.bool)
    keep[1, 20:25] = False  # row 1 skips five positions, as a finished sample does

    def decode():
        logits, state = model.step(tokens[:, :10])
        out = [logits]
        for i in range(10, 30):
            logits, state = model.step(tokens[:, i : i + 1], state, padding_mask=keep[:, i : i + 1])
            out.append(logits)
        return torch.cat(out, 1).detach(), state

    with torch.inference_mode():
        fused, fused_state = decode()
    with torch.enable_grad():
        layered, layered_state = decode()
    real = keep[:, :, None].expand_as(fused)
    torch.testing.assert_close(fused[real], layered[real], atol=1e-5, rtol=0)
    assert fused_state.positions.tolist() == layered_state.positions.tolist() == [30, 25]
    # Row 1 equals decoding its 25 real tokens alone.
    with torch.inference_mode():
        alone = model(tokens[1:, keep[1]])["logits"][0]
    torch.testing.assert_close(fused[1][keep[1]], alone, atol=1e-4, rtol=0)


@torch.inference_mode(False)
def test_fused_projection_follows_weight_updates():
    model = causal_model("favor_softmax")
    tokens = random_tokens(1, 12)

    def last_logits():
        with torch.inference_mode():
            _, state = model.step(tokens[:, :-1])
            return model.step(tokens[:, -1:], state)[0][:, -1]

    before = last_logits()
    with torch.no_grad():  # in place, as an optimizer step does
        model.layers[0].self_attn.v_proj.weight.mul_(0.5)
        model.layers[1].self_attn.q_proj.bias.add_(1.0)
    after = last_logits()
    with torch.inference_mode():
        expected = model(tokens)["logits"][:, -1]
    torch.testing.assert_close(after, expected, atol=1e-4, rtol=0)
    assert not torch.allclose(before, after, atol=1e-3)
    # Through .data, as EMA / weight averaging do: no version counter moves.
    model.layers[0].self_attn.k_proj.weight.data.copy_(
        torch.randn_like(model.layers[0].self_attn.k_proj.weight)
    )
    with torch.inference_mode():
        expected = model(tokens)["logits"][:, -1]
    torch.testing.assert_close(last_logits(), expected, atol=1e-4, rtol=0)


def test_favor_state_is_constant_size_and_kv_cache_grows():
    favor, exact = causal_model("favor_softmax"), causal_model("softmax")
    with torch.inference_mode():
        sizes = {
            name: [model.step(random_tokens(1, n))[1].nbytes() for n in (10, 200)]
            for name, model in (("favor", favor), ("exact", exact))
        }
    assert sizes["favor"][0] == sizes["favor"][1]
    assert sizes["exact"][1] == 20 * sizes["exact"][0]


@pytest.mark.parametrize("attention", ["favor_softmax", "softmax"])
@torch.inference_mode()
def test_hooks_fire_in_one_token_steps_and_change_nothing(attention):
    """One-token steps skip the module calls only where no forward hook is set: a hook on a
    projection (set after decoding started) sees every step, and the logits are the same."""
    model = causal_model(attention)
    tokens = random_tokens(2, 20)
    plain, _ = decode_after(model, tokens, 10)
    calls = []
    handle = model.layers[1].self_attn.q_proj.register_forward_hook(
        lambda module, args, out: calls.append(tuple(out.shape))
    )
    try:
        hooked, _ = decode_after(model, tokens, 10)
    finally:
        handle.remove()
    assert calls == [(2, 10, 32)] + [(2, 1, 32)] * 10
    torch.testing.assert_close(hooked, plain, atol=1e-5, rtol=0)


def test_bidirectional_model_cannot_step():
    with pytest.raises(ValueError, match="causal"):
        variant_model("favor_relu").step(random_tokens(1, 3))


PROMPTS = ["MKTAYIAK", "", "GSHMLEDPVDAFQWW"]


def test_samples_are_valid_and_reproducible():
    model = causal_model("favor_softmax")
    kwargs = dict(n=3, max_length=30, min_length=12, seed=7, batch_size=4)
    samples = generate(model, PROMPTS, **kwargs)
    assert len(samples) == 9
    for s in samples:
        assert s.sequence.startswith(PROMPTS[s.prompt_index])
        assert 12 <= len(s.sequence) <= 30
        assert set(s.sequence[len(PROMPTS[s.prompt_index]) :]) <= set(STANDARD_AMINO_ACIDS)
        assert s.stopped == ("length" if len(s.sequence) == 30 else "eos")
    again = generate(model, PROMPTS, **kwargs)
    assert [s.sequence for s in again] == [s.sequence for s in samples]
    # A sample does not depend on its batch (here: one sample per batch, no padding).
    alone = generate(model, PROMPTS, **{**kwargs, "batch_size": 1})
    assert [s.sequence for s in alone] == [s.sequence for s in samples]
    other = generate(model, PROMPTS, **{**kwargs, "seed": 8})
    assert [s.sequence for s in other] != [s.sequence for s in samples]


def test_mean_log_likelihood_matches_the_full_forward():
    model = causal_model("favor_relu")
    samples = generate(model, ["MKT", ""], n=2, max_length=25, seed=3)
    sequences = [s.sequence for s in samples]
    expected = [float(lp.mean()) for lp in causal_log_probs(model, sequences)]
    assert [s.mean_log_likelihood for s in samples] == pytest.approx(expected, abs=1e-4)


def test_greedy_is_deterministic_across_seeds():
    model = causal_model("softmax")
    a = generate(model, ["MK"], n=2, max_length=20, temperature=0, seed=1)
    b = generate(model, ["MK"], n=1, max_length=20, temperature=0, seed=2)
    assert a[0].sequence == a[1].sequence == b[0].sequence


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, 1.0, 2, None)).tolist() == [
        [True, True, False, False]
    ]
    assert torch.isfinite(filter_logits(logits, 1.0, None, 0.7)).tolist() == [
        [True, True, False, False]
    ]
    assert torch.isfinite(filter_logits(logits, 1.0, None, 0.4)).sum() == 1


def test_rotary_model_generates_past_training_length_learned_one_errors():
    learned = causal_model("favor_relu", positional="learned", max_len=16)
    with pytest.raises(ValueError, match="learned positions"):
        generate(learned, [""], max_length=40)
    samples = generate(causal_model("favor_relu"), [""], max_length=40, min_length=40)
    assert len(samples[0].sequence) == 40


@torch.inference_mode()
def test_learned_position_overflow_is_one_input_error_on_both_paths():
    model = causal_model("favor_relu", positional="learned", max_len=16)
    with pytest.raises(InputError, match="17 positions are past the model's learned positions"):
        model(random_tokens(1, 17))
    _, state = model.step(random_tokens(1, 16))
    with pytest.raises(InputError, match="17 positions are past the model's learned positions"):
        model.step(random_tokens(1, 1), state)
    with pytest.raises(ValueError, match="need_head_weights"):
        model(random_tokens(1, 1), state=state, need_head_weights=True)


def test_cli_writes_fasta_and_fails_cleanly(tmp_path, capsys):
    checkpoint = save_model(tmp_path / "causal.pt", causal_model("favor_softmax"))
    out = tmp_path / "samples.fasta"
    prompts = write_fasta(tmp_path / "prompts.fasta", {"p1": "MKT", "p2": "GSHM"})
    argv = [str(checkpoint), str(out), "--num-samples", "2", "--prompt-fasta", prompts]
    assert main(["generate", *argv, "--max-length", "20", "--seed", "5", "--quiet"]) == 0
    lines = out.read_text().splitlines()
    headers = [line for line in lines if line.startswith(">")]
    assert len(headers) == 4 and "seed=5" in headers[0] and "mean_log_likelihood=" in headers[0]
    assert headers[2].startswith(">sample_2 index=2 prompt=1")

    bad = tmp_path / "bad.fasta"
    assert main(["generate", str(checkpoint), str(bad), "--num-samples", "1", "--prompt", "MK1"])
    assert "not an amino-acid letter" in capsys.readouterr().err and not bad.exists()
    masked = save_model(tmp_path / "masked.pt", variant_model("favor_relu"))
    assert main(["generate", str(masked), str(bad), "--num-samples", "1", "--quiet"]) == 2
    assert "bidirectional" in capsys.readouterr().err and not bad.exists()


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), 1e-45, 1e300, -1.0])
def test_temperatures_that_would_sample_from_nan_are_refused(temperature):
    model = causal_model("favor_softmax")
    with pytest.raises(ValueError, match=r"temperature must be 0 \(greedy\) or between"):
        generate(model, [""], n=1, max_length=5, temperature=temperature)


@pytest.mark.parametrize("text", ["nan", "inf", "1e-45", "1e300", "-1"])
def test_cli_refuses_bad_temperatures_before_loading(tmp_path, capsys, text):
    out = tmp_path / "samples.fasta"
    argv = ["generate", str(tmp_path / "no-such.pt"), str(out), "--num-samples", "1"]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--temperature", text])
    assert exit_.value.code == 2 and "--temperature: expected 0 (greedy)" in capsys.readouterr().err
    assert not out.exists()


def test_temperature_range_edges_sample_cleanly():
    model = causal_model("favor_softmax")
    for temperature in (0.01, 100.0):
        (sample,) = generate(model, [""], n=1, max_length=8, temperature=temperature)
        assert set(sample.sequence) <= set(STANDARD_AMINO_ACIDS) and sample.sequence
