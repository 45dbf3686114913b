"""GPT: the model's maths (causality, KV cache), tokenizers, SFT masking, training, sampling, CLI."""

import json

import pytest
import torch
from conftest import assert_clean_error, run_cli

from aigc.config import data_config
from aigc.data.text import TokenBatcher, load_token_data
from aigc.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from aigc.errors import AigcError
from aigc.models.gpt import GPT, Decoder, GPTConfig, KVCache, SlotCache
from aigc.recipes.textgen import TextEngine, TextStream, sample_rows, sample_tokens

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 60
        + "Ünïcödé line: naïve café — 東京\n")
TINY = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "block_size=16",
        "--set", "batch_size=8", "--set", "log_every=5", "--set", "eval_batches=2"]


def tiny_gpt(vocab=40, block=16, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=16)).eval()


def test_causality_future_tokens_never_change_earlier_logits():
    m = tiny_gpt()
    x = torch.randint(40, (2, 12))
    y = x.clone()
    y[:, 7:] = torch.randint(40, (2, 5))
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_kv_cache_equals_full_recomputation_greedy():
    m = tiny_gpt(block=32)
    prompt = [[3, 1, 4, 1, 5]]
    cached = sample_tokens(m, prompt, 20, temperature=0)[0]
    seq = list(prompt[0])
    with torch.no_grad():
        for _ in range(20):                                   # no cache: recompute the whole prefix each step
            seq.append(int(m(torch.tensor([seq]))[0, -1].argmax()))
    assert cached == seq


def test_kv_cache_chunks_match_full_forward():
    m = tiny_gpt(block=32)
    x = torch.randint(40, (2, 20))
    with torch.no_grad():
        full = m(x)
        c = KVCache(m.cfg, 2, "cpu", torch.float32)
        parts = [m(x[:, :7], c), m(x[:, 7:8], c), m(x[:, 8:], c)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_decoder_step_matches_full_forward(bias):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=bias)).eval()
    for p in m.parameters():                                  # non-zero biases, so they are exercised
        torch.nn.init.normal_(p, 0.0, 0.3)
    x = torch.randint(40, (3, 16))
    with torch.no_grad():
        full = m(x)
        c, step = KVCache(m.cfg, 3, "cpu", torch.float32), Decoder(m)
        steps = torch.stack([step(x[:, i], c) for i in range(16)], 1)
        with pytest.raises(ValueError, match="full"):
            step(x[:, 0], c)
    assert torch.allclose(steps, full, atol=1e-5)


def test_sampling_past_the_context_and_seeds():
    m = tiny_gpt(block=16)
    a = sample_tokens(m, [[1, 2, 3]] * 3, 40, temperature=1.0, top_k=5, seed=7)
    b = sample_tokens(m, [[1, 2, 3]] * 3, 40, temperature=1.0, top_k=5, seed=7)
    assert a == b and all(len(r) == 43 for r in a)


def picks(logits, **params):
    """The tokens sample_rows picks over a sweep of uniforms."""
    out = []
    for u in torch.linspace(0, 0.999, 200):
        s = TextStream([0], 1, **params)
        s.uniforms = [float(u)]
        out.append(int(sample_rows(logits, [s])[0]))
    return out


def test_sampling_filters_and_inverse_cdf():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    free = picks(logits)
    assert [free.count(i) / 200 for i in range(4)] == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.01)
    assert set(picks(logits, top_k=2)) == {0, 1}
    assert set(picks(logits, top_p=0.7)) == {0, 1}                  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    assert set(picks(logits, top_p=0.4)) == {0}
    assert set(picks(logits, temperature=0)) == {0}
    assert picks(logits, temperature=0.5, top_k=3).count(2) < free.count(2)     # colder: fewer unlikely tokens
    assert picks(logits, top_k=2 ** 70) == free                     # above the vocabulary (and int64): no filter
    with pytest.raises(AigcError, match="top_p"):
        TextStream([0], 1, top_p=1.5)


def test_step_rows_matches_full_forward_at_different_positions():
    m = tiny_gpt(block=32)
    prompts = [torch.randint(40, (1, n)) for n in (3, 9, 1)]
    cache, step = SlotCache(m.cfg, 4, "cpu", torch.float32), Decoder(m)
    with torch.no_grad():
        for row, x in enumerate(prompts):
            one = KVCache(m.cfg, 1, "cpu", torch.float32)
            m(x, one)
            cache.put(row, one)
        tok = torch.tensor([5, 6, 7])
        out = step.step_rows(tok, cache)
        for row, x in enumerate(prompts):
            full = m(torch.cat([x, tok[row].view(1, 1)], 1))[0, -1]
            assert torch.allclose(out[row], full, atol=1e-5)
    assert cache.pos[:3].tolist() == [4, 10, 2]


def test_decoding_inside_autocast_keeps_the_weights_dtype():
    """The trainer samples under bf16 autocast on CUDA; the decoder writes its fp32 cache in place, so it runs
    outside autocast and gives the fp32 logits (CPU autocast stands in for CUDA's here)."""
    m = tiny_gpt(block=16)
    tok = torch.tensor([5, 6])
    with torch.no_grad():
        plain = [Decoder(m)(tok, KVCache(m.cfg, 2, "cpu", torch.float32)),
                 Decoder(m).step_rows(tok, SlotCache(m.cfg, 2, "cpu", torch.float32))]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = [Decoder(m)(tok, KVCache(m.cfg, 2, "cpu", torch.float32)),
                     Decoder(m).step_rows(tok, SlotCache(m.cfg, 2, "cpu", torch.float32))]
    for a, b in zip(plain, mixed):
        assert b.dtype == torch.float32 and torch.equal(a, b)


def test_a_stream_does_not_depend_on_its_batch():
    """Streams that join, leave and fill the context beside it leave a stream's tokens unchanged."""
    m = tiny_gpt(block=16)
    tok = CharTokenizer([chr(65 + i) for i in range(40)])

    def streams():
        return [TextStream([1, 2, 3], 40, 1.0, 5, None, seed=7), TextStream([4] * 9, 3, 0.7, None, 0.9, seed=1),
                TextStream([5, 6], 25, 0.0, seed=2), TextStream([7], 12, 1.3, seed=3),
                TextStream([8, 9, 10], 20, 1.0, seed=4)]
    alone = [TextEngine(m, tok, slots=1).run([s])[0] for s in streams()]
    for slots in (2, 5):                  # 5: all added at once, the two 3-token prompts in one forward pass
        together = TextEngine(m, tok, slots=slots).run(streams())
        for a, b in zip(alone, together):
            assert a.tokens == b.tokens and a.finish == b.finish == "length" and len(a.tokens) == a.max_new_tokens
    assert sample_tokens(m, [[1, 2, 3]] * 2, 40, top_k=5, seed=7) == sample_tokens(m, [[1, 2, 3]] * 2, 40, top_k=5,
                                                                                    seed=7)


def test_stop_strings_end_of_text_and_streamed_pieces():
    m = tiny_gpt(block=16)
    tok = CharTokenizer([chr(97 + i) for i in range(40)])
    free = TextEngine(m, tok).run([TextStream([1, 2], 30, 0.0)])[0]
    stop = free.text[12:14]
    pieces = []
    s = TextStream([1, 2], 30, 0.0, stop=(stop,))
    TextEngine(m, tok).run([s], on_step=lambda changed: pieces.append(s.take()))
    assert s.text == free.text[:free.text.index(stop)] and s.finish == "stop"
    assert "".join(pieces) == s.text                                 # never the start of the stop string
    tok.__class__ = type("WithEOT", (CharTokenizer,), {"eot_id": free.tokens[5]})
    e = TextEngine(m, tok).run([TextStream([1, 2], 30, 0.0)])[0]
    assert e.finish == "stop" and e.tokens == free.tokens[:free.tokens.index(free.tokens[5])]
    c = TextStream([1, 2], 30, 0.0)
    engine = TextEngine(m, tok)
    engine.add(c)
    engine.step()
    c.cancelled = True
    assert engine.step() == [c] and c.finish == "cancelled" and engine.active == []


@pytest.mark.parametrize("cls", [CharTokenizer, BPETokenizer])
def test_tokenizer_round_trip(cls, tmp_path):
    tok = cls.train([TEXT], 300)
    for s in (TEXT[:200], "naïve café — 東京", "Speak, speak."):
        assert tok.decode(tok.encode(s).tolist()) == s
    (tmp_path / "t.json").write_text(tok.to_json(), encoding="utf-8")
    again = load_tokenizer(tmp_path / "t.json")
    assert again.encode(TEXT[:300]).tolist() == tok.encode(TEXT[:300]).tolist()
    if cls is BPETokenizer:
        assert tok.decode(tok.encode("unseen ∑ symbols").tolist()) == "unseen ∑ symbols"    # byte-level


def test_char_tokenizer_unknown_characters():
    tok = CharTokenizer.train(["abc"])
    with pytest.raises(AigcError, match="not in this model's vocabulary: 'x', 'z'"):
        tok.encode("axbz")


def test_sft_loss_only_on_response_tokens(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT)
    tok_path = tmp_path / "tok.json"
    tok_path.write_text(CharTokenizer.train([TEXT]).to_json())
    lines = [json.dumps({"prompt": "All: hi\n", "response": "A: speak\n"})] * 5
    (tmp_path / "s.jsonl").write_text("\n".join(lines))
    data = load_token_data(data_config("sft", dir=str(tmp_path / "s.jsonl")), 32, tok_path)
    tokens, mask = data.sft[0]
    tok = load_tokenizer(tok_path)
    assert tok.decode(tokens[1:][mask].tolist()) == "A: speak\n"          # exactly the response is scored
    batch = next(TokenBatcher(data, 2, seed=0))
    assert batch["loss_mask"].shape == (2, batch["tokens"].shape[1] - 1)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=1, n_embd=8))
    full = m.loss(batch["tokens"])["loss"]
    masked = m.loss(batch["tokens"], batch["loss_mask"])["loss"]
    x, y = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
    nll = torch.nn.functional.cross_entropy(m(x).transpose(1, 2), y, reduction="none")
    assert torch.allclose(masked, nll[batch["loss_mask"]].mean()) and not torch.allclose(full, masked)


def test_training_reduces_loss_on_a_repeated_corpus(tmp_path):
    from aigc.run import start_training

    (tmp_path / "c.txt").write_text(TEXT)
    sets = ["n_layer=1", "n_head=2", "n_embd=32", "block_size=32", "batch_size=16", "lr=3e-3", "eval_every=0",
            "sample_every=0", "log_every=10", "warmup_steps=5"]
    r = start_training("gpt", "text", None, sets, {"data.dir": str(tmp_path / "c.txt"), "train.steps": 60},
                       str(tmp_path / "run"), False, True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row["kind"] == "train"]
    assert losses[-1] < 0.6 * losses[0]
    assert r["final_eval"]["val_loss"] < 2.5


def test_corpus_errors(tmp_path):
    cfg = data_config("text", dir=str(tmp_path / "e.txt"))
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(AigcError, match="empty"):
        load_token_data(cfg, 16)
    (tmp_path / "e.txt").write_text("short text")
    with pytest.raises(AigcError, match="too short for one block"):
        load_token_data(cfg, 16)
    (tmp_path / "e.txt").write_bytes(b"hello \xff\xfe world" * 100)
    with pytest.raises(AigcError, match=r"e.txt is not valid UTF-8 \(byte offset 6"):
        load_token_data(cfg, 16)
    cfg.encoding_errors = "replace"
    assert load_token_data(cfg, 16).tokenizer.vocab_size > 5


def test_code_corpus_default_is_the_stdlib():
    data = load_token_data(data_config("code", max_chars=200_000), 64)
    assert "def " in data.tokenizer.decode(data.train[:5000].tolist())


# ---------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt")
    (d / "corpus.txt").write_text(TEXT)
    p = run_cli("train", "gpt", "--data", "text", "--data-dir", d / "corpus.txt", "--steps", 15, "--out", d / "run",
                "--quiet", *TINY)
    assert p.returncode == 0, p.stderr
    return d / "run"


def test_cli_sample_eval(gpt_run, tmp_path):
    assert (gpt_run / "tokenizer.json").is_file()
    p = run_cli("sample", gpt_run, "--prompt", "Speak", "--num", 2, "--max-new-tokens", 30, "--seed", 1)
    assert p.returncode == 0, p.stderr
    q = run_cli("sample", gpt_run, "--prompt", "Speak", "--num", 2, "--max-new-tokens", 30, "--seed", 1)
    assert p.stdout == q.stdout and len(p.stdout) > 20
    s = run_cli("sample", gpt_run, "--prompt", "Speak", "--max-new-tokens", 30, "--stream", "--temperature", 0)
    g = run_cli("sample", gpt_run, "--prompt", "Speak", "--max-new-tokens", 30, "--temperature", 0)
    assert s.returncode == 0 and s.stdout.strip() == g.stdout.strip()             # streaming prints the same text
    (tmp_path / "p.txt").write_text("All:\n" * 40)
    long = run_cli("sample", gpt_run, "--prompt-file", tmp_path / "p.txt", "--max-new-tokens", 5)
    assert long.returncode == 0 and "only its last 16" in long.stderr
    e = run_cli("eval", gpt_run, "--quiet")
    r = json.loads(e.stdout)
    assert {"val_loss", "val_ppl", "val_bpc", "num_val_tokens"} <= r.keys()


def test_cli_stop_strings(gpt_run):
    from aigc.cli import unescape_stop

    free = run_cli("sample", gpt_run, "--prompt", "All", "--max-new-tokens", 40, "--temperature",
                   0).stdout.rstrip("\n")
    stop = free[len(free) // 2]                                # a character the greedy output really contains
    p = run_cli("sample", gpt_run, "--prompt", "All", "--max-new-tokens", 40, "--stop", stop, "--temperature", 0)
    assert p.returncode == 0 and p.stdout.rstrip("\n") == free[:free.index(stop)]
    assert unescape_stop("\\n\\n") == "\n\n" and unescape_stop("a\\tb") == "a\tb"


def test_cli_bad_input(gpt_run, tmp_path):
    assert_clean_error(run_cli("sample", gpt_run, "--prompt", "Speak ∑"), "not in this model's vocabulary", "'∑'")
    assert_clean_error(run_cli("sample", gpt_run, "--num", 2, "--stream"), "--num 1")
    assert_clean_error(run_cli("sample", gpt_run, "--top-p", 1.5), "--top-p")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "All", "response": "Speak"}\n{"prompt": oops}\n')
    p = run_cli("train", "gpt", "--init-from", gpt_run, "--data", "sft", "--data-dir", tmp_path / "bad.jsonl",
                "--steps", 2, "--out", tmp_path / "o")
    assert_clean_error(p, "bad.jsonl:2", "not valid JSON")
    p = run_cli("train", "gpt", "--init-from", gpt_run, "--data", "text", "--data-dir", tmp_path / "bad.jsonl",
                "--steps", 2, "--out", tmp_path / "o2", "--set", "n_layer=3")
    assert_clean_error(p, "cannot change n_layer")
    assert_clean_error(run_cli("train", "gpt", "--data", "mnist", "--steps", 1, "--out", tmp_path / "o3"),
                       "trains on text, code or sft")
    assert_clean_error(run_cli("train", "vae", "--data", "text", "--steps", 1, "--out", tmp_path / "o4"),
                       "trains on images")


def test_cli_fine_tune_and_sft(gpt_run, tmp_path):
    (tmp_path / "more.txt").write_text(TEXT[::-1] * 2)
    p = run_cli("train", "gpt", "--init-from", gpt_run, "--data", "text", "--data-dir", tmp_path / "more.txt",
                "--steps", 5, "--out", tmp_path / "ft", "--quiet", "--set", "batch_size=4")
    assert p.returncode == 0, p.stderr
    assert "initialised from" in p.stderr
    lines = [json.dumps({"prompt": "All:\n", "response": "Speak, speak.\n"})] * 8
    (tmp_path / "sft.jsonl").write_text("\n".join(lines))
    p = run_cli("train", "gpt", "--init-from", gpt_run, "--data", "sft", "--data-dir", tmp_path / "sft.jsonl",
                "--steps", 5, "--out", tmp_path / "sft", "--quiet", "--set", "batch_size=4")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "sft" / "tokenizer.json").read_text() == (gpt_run / "tokenizer.json").read_text()


def test_token_cache_follows_the_text_not_the_files_size_and_time(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("AIGC_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcd" * 500, encoding="utf-8")
    stat = corpus.stat()
    first = load_token_data(data_config("text", dir=str(corpus)), 16)
    corpus.write_text("dcba" * 500, encoding="utf-8")             # same size ...
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))      # ... and the same modification time
    second = load_token_data(data_config("text", dir=str(corpus)), 16)
    assert first.tokenizer.decode(first.val[:4].tolist()) == "abcd"
    assert second.tokenizer.decode(second.val[:4].tolist()) == "dcba"
