"""Preference tuning: the DPO and Bradley-Terry maths, the preferences reader, the frozen reference, best-of-N,
the chat template, the lexicon judge and the built-in task end to end on a tiny play."""

import json
import math
import random

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, run_cli
from safetensors.torch import load_file

from aigc.config import data_config
from aigc.data import preferences as P
from aigc.data.tokenizers import CharTokenizer
from aigc.errors import AigcError
from aigc.generation import Request, generate
from aigc.metrics.sentiment import LexiconJudge, lexicon_reward
from aigc.models.gpt import GPT, GPTConfig
from aigc.recipes import open_run
from aigc.recipes import preference as pref
from aigc.run import start_training

WORDS = ["love", "sweet", "joy", "death", "foul", "hate", "the", "king", "is", "my", "come", "go"]


def play(n=300, seed=0) -> str:
    """Speeches of five words, half of them in the sentiment lexicon, by four speakers."""
    rng = random.Random(seed)
    return "".join(f"\n\n{rng.choice(['ROMEO', 'JULIET', 'NURSE', 'KING'])}:\n"
                   f"{' '.join(rng.choice(WORDS) for _ in range(5))}." for _ in range(n))


TINY = ["n_layer=1", "n_head=2", "n_embd=32", "block_size=48", "batch_size=8", "eval_batches=1", "log_every=2"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A tiny play, a GPT trained on it, and preference pairs made from its samples by `make_pairs`."""
    from aigc.run import make_pairs

    root = tmp_path_factory.mktemp("pref")
    (root / "play.txt").write_text(play(), encoding="utf-8")
    start_training("gpt", "text", None, TINY, {"data.dir": str(root / "play.txt"), "train.steps": 800}, root / "base",
                   False, True)
    info = make_pairs(root / "base", root / "pairs.jsonl", 40, 4, 16, seed=0)
    return root, info


def dpo(root, name, steps, extra=(), stop_at=None):
    sets = ["batch_size=4", "eval_batches=1", "objective=dpo", f"eval_file={root / 'pairs.eval.jsonl'}",
            "judge=lexicon", *extra]
    flags = {"data.dir": str(root / "pairs.jsonl"), "train.steps": steps}
    return start_training("gpt", "preferences", None, sets, flags, root / name, True, True, stop_at=stop_at,
                          init_from=str(root / "base"))


# ------------------------------------------------------------------------------------------ the maths
def test_dpo_loss_against_a_hand_computed_value():
    pc, pr = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    rc, rr = torch.tensor([-11.0, -4.5]), torch.tensor([-11.0, -2.0])
    loss, logs = pref.dpo_loss(pc, pr, rc, rr, beta=0.5)
    # pair 1: 0.5 * ((-10 + 11) - (-12 + 11)) = 1.0; pair 2: 0.5 * ((-4 + 4.5) - (-3 + 2)) = 0.75
    want = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(-0.75))) / 2
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert logs["rewards/chosen"].item() == pytest.approx((0.5 + 0.25) / 2)
    assert logs["rewards/rejected"].item() == pytest.approx((-0.5 - 0.5) / 2)
    assert logs["rewards/margins"].item() == pytest.approx(0.875)
    assert logs["rewards/accuracies"].item() == 1.0


def test_ipo_loss_regresses_the_margin_to_one_over_two_beta():
    pc, pr, rc, rr = torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0])
    loss, _ = pref.dpo_loss(pc, pr, rc, rr, beta=0.25, kind="ipo")
    assert loss.item() == pytest.approx((2.0 - 1 / 0.5) ** 2)                     # h = 1 + 1 = 2 = 1 / (2 beta)
    loss, _ = pref.dpo_loss(pc, pr, rc, rr, beta=0.1, kind="ipo")
    assert loss.item() == pytest.approx((2.0 - 5.0) ** 2)


def test_bradley_terry_loss_is_minus_log_sigmoid_of_the_reward_gap():
    r_c, r_r = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([0.5, 1.0, 0.0])
    loss, logs = pref.bradley_terry_loss(r_c, r_r)
    p = 1 / (1 + torch.exp(-(r_c - r_r)))                    # P(chosen preferred) under Bradley-Terry
    assert loss.item() == pytest.approx(-torch.log(p).mean().item(), abs=1e-6)
    assert logs["accuracy"].item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("beta", [1.0, 100.0])
def test_a_dpo_step_pushes_chosen_up_and_rejected_down(beta):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16)
    policy = GPT(cfg)
    ref = GPT(cfg).requires_grad_(False)
    ref.load_state_dict(policy.state_dict())
    pairs = [P.Pair(np.array([1, 2, 3]), np.array([4, 5, 6, 7]), np.array([8, 9])) for _ in range(2)]
    b = P.pair_batch(pairs, 16)
    tokens, mask = (b[k].transpose(0, 1).reshape(4, -1) for k in ("tokens", "loss_mask"))
    before = pref.response_logps(policy, tokens, mask).detach()
    loss, _ = pref.dpo_loss(*pref.response_logps(policy, tokens, mask).split(2), *before.split(2), beta=beta)
    loss.backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 1e-3 / beta * p.grad                        # a small step (the gradient grows with beta)
    after = pref.response_logps(policy, tokens, mask).detach()
    assert (after[:2] > before[:2]).all() and (after[2:] < before[2:]).all()


def test_pair_batch_masks_exactly_the_response_tokens():
    pairs = [P.Pair(np.array([1, 2, 3]), np.array([4, 5]), np.array([6, 7, 8, 9]))]
    b = P.pair_batch(pairs, 16)
    assert b["tokens"].shape == (1, 2, 7) and b["loss_mask"].shape == (1, 2, 6)
    chosen, rejected = b["tokens"][0], b["loss_mask"][0]
    assert chosen[0, :5].tolist() == [1, 2, 3, 4, 5] and chosen[1].tolist() == [1, 2, 3, 6, 7, 8, 9]
    targets = b["tokens"][0, :, 1:]
    assert targets[0][rejected[0]].tolist() == [4, 5] and targets[1][rejected[1]].tolist() == [6, 7, 8, 9]
    long = P.pair_batch([P.Pair(np.arange(10), np.arange(10, 16), np.arange(20, 22))], 8)  # 9 tokens at most
    t, m = long["tokens"][0, 0], long["loss_mask"][0, 0]
    assert t[-6:].tolist() == list(range(10, 16)) and int(m.sum()) == 6                   # the prompt was cut
    assert pref.last_positions(b["loss_mask"][0]).tolist() == [4, 6]          # each row's last token


def test_a_reward_model_reads_pairs_as_long_as_its_context(tmp_path):
    from aigc.config import RunConfig, TrainConfig
    from aigc.recipes.gpt import GPTRecipe, GPTSettings

    (tmp_path / "tokenizer.json").write_text(CharTokenizer.train(["abcdefgh"]).to_json())
    P.write_jsonl(tmp_path / "p.jsonl", [{"prompt": "abcdef", "chosen": "gh" * 5, "rejected": "ab"}] * 4)
    cfg = RunConfig("gpt", data_config("preferences", dir=str(tmp_path / "p.jsonl")),
                    GPTSettings(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=16, objective="reward"),
                    TrainConfig())
    data = GPTRecipe.load_data(cfg, tmp_path)
    batch = P.pair_batch(data.train[:2], data.block_size)
    assert batch["tokens"].shape[-1] == 8                      # the whole sequence is the reward model's input
    loss, _ = GPTRecipe(cfg).pair_loss(batch)
    assert torch.isfinite(loss)


def test_lexicon_judge():
    assert lexicon_reward("O sweet love, my fair Juliet") == 3
    assert lexicon_reward("Death! Foul murder; lovely") == -2
    assert lexicon_reward("gloves, cloves; lovelier") == 0     # whole words only
    assert LexiconJudge()(["x", "y"], ["joy", "hate"]) == [1.0, -1.0]
    assert pref.load_judge("lexicon-positive")(["x"] * 3, ["joy joy", "hate", "the"]) == [1.0, 0.0, 0.0]


def test_best_of_n_kl_bound():
    assert pref.best_of_n_kl(1) == 0
    assert pref.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)


# ------------------------------------------------------------------------------------------ the data
def test_preferences_reader_errors(tmp_path):
    tok = tmp_path / "tok.json"
    tok.write_text(CharTokenizer.train(["abc xyz\n"]).to_json())
    good = {"prompt": "ab", "chosen": "c", "rejected": "x"}
    cases = {"bad json": ('{"prompt": "a"\n', "f.jsonl:1", "not valid JSON"),
             "missing field": (json.dumps(good) + "\n" + json.dumps({"prompt": "a", "chosen": "b"}) + "\n",
                               "f.jsonl:2", '"rejected"'),
             "empty": (json.dumps({**good, "chosen": ""}) + "\n", "f.jsonl:1", "must not be empty"),
             "unknown character": (json.dumps({**good, "rejected": "Q"}) + "\n", "f.jsonl:1", "'Q'")}
    for name, (text, *fragments) in cases.items():
        (tmp_path / "f.jsonl").write_text(text)
        with pytest.raises(AigcError) as e:
            P.load(data_config("preferences", dir=str(tmp_path / "f.jsonl")), 16, tok)
        for f in fragments:
            assert f in str(e.value), (name, str(e.value))
    (tmp_path / "f.jsonl").write_text((json.dumps(good) + "\n\n") * 10)
    with pytest.raises(AigcError, match="--init-from"):
        P.load(data_config("preferences", dir=str(tmp_path / "f.jsonl")), 16, None)
    data = P.load(data_config("preferences", dir=str(tmp_path / "f.jsonl"), template="a{prompt}b"), 16, tok)
    assert (len(data.train), len(data.val)) == (9, 1)
    assert data.train[0].prompt.tolist() == tok_ids(tok, "aabb") and data.eval_prompts() == ["ab"]


def tok_ids(path, text):
    from aigc.data.tokenizers import load_tokenizer

    return load_tokenizer(path).encode(text).tolist()


def test_task_prompts_end_with_a_speaker_and_held_out_ones_are_apart():
    text = play(400)
    train, held = P.task_prompts(text)
    assert all(p.endswith(":\n") and len(p) <= P.PROMPT_CHARS for p in train + held)
    assert not set(train) & set(held) and len(held) >= 1
    rows = P.pairs_from_samples(["a", "b"], [["love", "hate"], ["x", "y"]], [[1, -1], [0, 0]])
    assert rows == [{"prompt": "a", "chosen": "love", "rejected": "hate", "chosen_reward": 1,
                     "rejected_reward": -1}]                # a tie makes no pair


# ------------------------------------------------------------------------------------------ training and sampling
@pytest.mark.slow
def test_dpo_keeps_its_reference_frozen_and_resumes_exactly(task):
    from aigc.run import resume_training

    root, info = task
    assert info["train_pairs"] > 4 and info["held_out_pairs"] >= 1
    pairs = [json.loads(x) for x in (root / "pairs.jsonl").read_text().splitlines()]
    assert all(lexicon_reward(p["chosen"]) > lexicon_reward(p["rejected"]) for p in pairs)
    dpo(root, "dpo", 6)
    base = load_file(str(root / "base" / "checkpoint" / "model.safetensors"))
    ref = load_file(str(root / "dpo" / "reference.safetensors"))
    tuned = load_file(str(root / "dpo" / "checkpoint" / "model.safetensors"))
    assert ref.keys() == base.keys() and all(torch.equal(ref[k], base[k]) for k in base)
    assert any(not torch.equal(tuned[k], base[k]) for k in base)
    rows = [json.loads(x) for x in (root / "dpo" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind") == "train"]
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "logps/chosen"} <= train[-1].keys()
    dpo(root, "half", 6, stop_at=3)                            # stopped half-way, then resumed
    resume_training(root / "half", quiet=True)
    again = load_file(str(root / "half" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(again[k], tuned[k]) for k in tuned)


@pytest.mark.slow
def test_dpo_eval_reward_model_and_best_of_n(task, capsys):
    from aigc.run import eval_run

    root, _ = task
    out = dpo(root, "dpo-sft", 4, ["sft_weight=1.0", "ptx_weight=1.0"])
    assert out["final_eval"]["val_dpo_loss"] > 0
    rows = [json.loads(x) for x in (root / "dpo-sft" / "metrics.jsonl").read_text().splitlines()]
    assert {"sft_nll", "ptx_loss"} <= next(r for r in rows if r.get("kind") == "train").keys()
    assert open_run(root / "dpo-sft", torch.device("cpu"))[0].data.lm_text == str(root / "play.txt")  # the init's
    r = eval_run(root / "dpo-sft", quiet=True)
    assert {"val_dpo_loss", "val_pair_accuracy", "val_rewards_margins", "num_pairs",
            "text_val_loss_change"} <= r.keys()
    judged = r
    assert r["judge"] == "lexicon" and {"reward", "positive_rate", "win_rate", "kl_to_reference"} <= judged.keys()
    assert 0 <= judged["win_rate"] <= 1 and judged["num_prompts"] >= 1
    sets = ["batch_size=4", "eval_batches=1", "objective=reward", f"eval_file={root / 'pairs.eval.jsonl'}"]
    out = start_training("gpt", "preferences", None, sets, {"data.dir": str(root / "pairs.jsonl"), "train.steps": 4},
                         root / "rm", True, True, init_from=str(root / "base"))
    assert {"val_pair_accuracy", "val_reward_loss"} <= out["final_eval"].keys()
    _, rm = open_run(root / "rm", torch.device("cpu"))
    with pytest.raises(AigcError, match="does not apply"):
        generate(rm, Request(prompt="x"))
    with pytest.raises(AigcError, match="scores text"):
        generate(rm, Request())
    _, base = open_run(root / "base", torch.device("cpu"))
    plain = generate(base, Request(prompt="\n\nROMEO:\n", num=3, max_new_tokens=16, seed=5)).texts
    one = generate(base, Request(prompt="\n\nROMEO:\n", num=3, max_new_tokens=16, seed=5, best_of=1)).texts
    assert one == plain                                    # candidate 0 of sample i is the plain sample i
    many = Request(prompt="\n\nROMEO:\n", num=12, max_new_tokens=16, seed=5)
    pool = generate(base, many).texts
    for judge in ("lexicon", str(root / "rm")):
        best = generate(base, Request(prompt="\n\nROMEO:\n", num=3, max_new_tokens=16, seed=5, best_of=4,
                                      judge=judge)).texts
        assert all(b in pool[i::3] for i, b in enumerate(best))        # each picked among its own 4 candidates
        if judge == "lexicon":
            assert [lexicon_reward(b) for b in best] == [max(map(lexicon_reward, pool[i::3])) for i in range(3)]
    with pytest.raises(AigcError, match="needs a judge"):
        generate(base, Request(prompt="x", best_of=2))
    with pytest.raises(AigcError, match="not a reward model"):
        generate(base, Request(prompt="x", best_of=2, judge=str(root / "base")))
    with pytest.raises(AigcError, match="--best-of"):
        generate(base, Request(prompt="x", judge="lexicon"))


def test_chat_template_and_messages(tmp_path):
    from aigc.config import RunConfig, TrainConfig
    from aigc.recipes.gpt import GPTRecipe, GPTSettings

    cfg = RunConfig("gpt", data_config("sft", template="Q: {prompt}\nA: "), GPTSettings(vocab_size=40),
                    TrainConfig())
    r = GPTRecipe(cfg)
    assert r.prompt_text(Request(prompt="hi")) == "Q: hi\nA: "
    chat = (("user", "hi"), ("assistant", "hello"), ("user", "bye"))
    assert r.prompt_text(Request(messages=chat)) == "Q: hi\nA: helloQ: bye\nA: "
    with pytest.raises(AigcError, match="role 'user'"):
        r.chat_prompt([("user", "a"), ("assistant", "b")])
    cfg.data.template = "no slot"
    with pytest.raises(AigcError, match="{prompt}"):
        r.prompt_text(Request(prompt="hi"))
    plain = GPTRecipe(RunConfig("gpt", data_config("text"), GPTSettings(vocab_size=40), TrainConfig()))
    assert plain.prompt_text(Request(prompt="hi")) == "hi" and "messages" not in plain.accepts()
    with pytest.raises(AigcError, match="not a chat model"):
        plain.chat_prompt([("user", "hi")])


def test_cli_pairs_train_sample_and_errors(task, tmp_path):
    root, _ = task
    p = run_cli("pairs", root / "base", "--out", tmp_path / "p.jsonl", "--prompts", 10, "--max-new-tokens", 8)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert (tmp_path / "p.eval.jsonl").is_file() and "--set objective=dpo" in info["next"]
    s = run_cli("sample", root / "base", "--prompt", "\n\nROMEO:\n", "--max-new-tokens", 8, "--best-of", 3,
                "--judge", "lexicon")
    assert s.returncode == 0, s.stderr
    assert_clean_error(run_cli("train", "gpt", "--data", "preferences", "--data-dir", tmp_path / "p.jsonl",
                               "--set", "objective=dpo", "--steps", 1, "--out", tmp_path / "x"), "--init-from")
    assert_clean_error(run_cli("train", "gpt", "--init-from", root / "base", "--data", "preferences", "--data-dir",
                               tmp_path / "p.jsonl", "--set", "objective=lm", "--steps", 1, "--out", tmp_path / "y"),
                       "objective=dpo")                     # the preset gpt-preferences trains DPO by default
    assert_clean_error(run_cli("pairs", root / "base", "--out", tmp_path / "p.txt"), ".jsonl")


@pytest.mark.parametrize("objective", ["dpo", "reward"])
def test_objective_skeleton(objective, tmp_path):
    """As tests/test_families.py does for each family: a train step changes the weights (and never the reference),
    an eval step does not, save -> load gives the same outputs."""
    from aigc.io import checkpoint as ckpt
    from aigc.io.rundir import CHECKPOINT, CONFIG
    from aigc.recipes import build_config, recipe_class
    from aigc.train.trainer import Optimizers

    tok = CharTokenizer.train([play(20)])
    (tmp_path / "tokenizer.json").write_text(tok.to_json())
    rows = [{"prompt": "\n\nROMEO:\n", "chosen": "love is sweet.", "rejected": "death is foul."}] * 6
    P.write_jsonl(tmp_path / "p.jsonl", rows)
    sets = ["batch_size=2", "n_layer=1", "n_head=2", "n_embd=16", "block_size=32", f"objective={objective}",
            "ptx_weight=0"]
    cfg = build_config("gpt", "preferences", None, sets, {"data.dir": str(tmp_path / "p.jsonl"), "train.steps": 1})
    cls = recipe_class("gpt")
    torch.manual_seed(0)
    data = cls.load_data(cfg, tmp_path)
    recipe = cls(cfg)
    recipe.tokenizer = data.tokenizer
    torch.manual_seed(1)                                   # a run to tune from, with other weights than recipe's
    ckpt.save_checkpoint(tmp_path / "base" / CHECKPOINT, ckpt.flat_state({"gpt": GPT(cfg.model)}), None, {})
    recipe.init_from(tmp_path / "base")
    if objective == "dpo":
        ref = {k: v.clone() for k, v in recipe.reference.state_dict().items()}
        assert all(torch.equal(ref[k], v) for k, v in recipe.model.state_dict().items())
    before = {k: v.clone() for k, v in ckpt.flat_state(recipe.modules).items()}
    opt = Optimizers(recipe.param_groups(), cfg.train, torch.device("cpu"))
    batch = next(cls.make_batcher(data, cfg))
    logs = recipe.train_step(batch, opt)
    assert torch.isfinite(logs["loss"])
    after = ckpt.flat_state(recipe.modules)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if objective == "dpo":
        assert all(torch.equal(ref[k], v) for k, v in recipe.reference.state_dict().items())
        assert not any(p.requires_grad for p in recipe.reference.parameters())
    for m in recipe.modules.values():
        m.eval()
    frozen = {k: v.clone() for k, v in after.items()}
    with torch.no_grad():
        ev = recipe.evaluate(data, max_batches=1)
    assert "val_pair_accuracy" in ev and all(torch.equal(frozen[k], v) for k, v in ckpt.flat_state(
        recipe.modules).items())
    cfg.save(tmp_path / CONFIG)
    ckpt.save_checkpoint(tmp_path / CHECKPOINT, ckpt.flat_state(recipe.modules), None, {})
    recipe.save_artifacts(tmp_path, data)
    _, loaded = open_run(tmp_path, torch.device("cpu"))
    with torch.no_grad():
        assert recipe.evaluate(data, max_batches=1) == loaded.evaluate(data, max_batches=1)


def test_online_pairs_are_the_judges_best_and_worst_of_the_policys_samples():
    """Online DPO's pairs: k completions per prompt from the policy, the judge's best as chosen and its worst as
    rejected, none where all tie; the same seeds give the same pairs."""
    tok = CharTokenizer.train([play(20)])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    prompts = ["\n\nROMEO:\n", "\n\nJULIET:\n", "\n\nKING:\n"]
    ids = [np.asarray(tok.encode(p), dtype=np.int64) for p in prompts]

    def vowels(_, texts):
        return [float(sum(c in "aeiou" for c in t)) for t in texts]

    pairs, logs = pref.online_pairs(model, tok, vowels, ids, prompts, [1, 2, 3], 4, 12)
    assert 0 < len(pairs) <= 3 and logs["online/pair_rate"] == pytest.approx(len(pairs) / 3)
    for p in pairs:
        i = next(j for j, x in enumerate(ids) if np.array_equal(x, p.prompt))
        samples = pref.online_pairs(model, tok, lambda _, t: [0.0] * len(t), [ids[i]], [prompts[i]], [i + 1], 4, 12)
        assert samples[0] == []                                   # a judge that ties everything makes no pair
        scores = vowels(None, [tok.decode(p.chosen.tolist()), tok.decode(p.rejected.tolist())])
        assert scores[0] > scores[1]
    again, _ = pref.online_pairs(model, tok, vowels, ids, prompts, [1, 2, 3], 4, 12)
    assert [(a.chosen.tolist(), a.rejected.tolist()) for a in again] == \
        [(a.chosen.tolist(), a.rejected.tolist()) for a in pairs]


@pytest.mark.slow
def test_online_dpo_trains_on_judged_samples_and_resumes_exactly(task):
    from aigc.run import resume_training

    root, _ = task
    dpo(root, "online", 6, ["online_judge=lexicon", "ptx_weight=0"])
    rows = [json.loads(x) for x in (root / "online" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind") == "train"]
    assert {"online/reward", "online/positive_rate", "online/pair_rate", "rewards/margins"} <= train[-1].keys()
    dpo(root, "online-half", 6, ["online_judge=lexicon", "ptx_weight=0"], stop_at=3)
    resume_training(root / "online-half", quiet=True)
    a, b = (load_file(str(root / n / "checkpoint" / "model.safetensors")) for n in ("online", "online-half"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(AigcError, match="online_judge"):
        dpo(root, "bad", 2, ["online_judge=lexicon", "online_samples=1"])
