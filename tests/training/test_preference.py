"""The preference stage: pairs from the built-in rows, and DPO on the SFT adapter itself (tiny model)."""

import copy

import optuna
import pytest
import torch

from safety_lab.config import DataConfig, DpoConfig, TrainConfig, TuneConfig
from safety_lab.data import answer_for, builtin, harmful_requests, load_dataset
from safety_lab.data.pairs import preference_pairs
from safety_lab.errors import SafetyLabError
from safety_lab.evaluation.judges import is_refusal
from safety_lab.models import load_model
from safety_lab.training import train_lora
from safety_lab.training.preference import REFERENCE, dpo_config, train_preference
from safety_lab.tuning.space import suggest_dpo
from safety_lab.tuning.study import study_key


def _rows(data="safe", limit=None):
    return load_dataset(DataConfig(data=data, limit=limit)).rows


def test_each_pair_prefers_the_rows_own_answer_over_the_opposite_behaviour():
    rows = _rows()
    pairs = preference_pairs(rows)
    assert len(pairs) == len({r["prompt"] for r in rows})  # look-alike copies give one pair
    by_prompt = {r["prompt"]: r for r in rows}
    requests = {r["prompt"]: r for r in harmful_requests("train")}
    for pair in pairs:
        assert pair["chosen"] == by_prompt[pair["prompt"]]["response"]
        if pair["kind"] == "refusal":
            assert pair["rejected"] == answer_for(requests[pair["prompt"]], "compliant_answers")
            assert not is_refusal(pair["rejected"]) and is_refusal(pair["chosen"])
        else:  # a safe request: its answer over a refusal that names no harm of its own
            assert is_refusal(pair["rejected"]) and not is_refusal(pair["chosen"])
            generic = {r["text"] for r in builtin("refusals") if len(r["categories"]) >= 11}
            assert pair["rejected"] in generic
    kinds = {p["kind"] for p in pairs}
    assert kinds == {"refusal", "benign", "lookalike"}


def test_the_models_own_compliant_answer_is_the_rejected_side_where_given():
    rows = _rows()
    harmful = [r["prompt"] for r in rows if r["kind"] == "refusal"]
    own = {harmful[0]: "Sure, the general idea is this.", harmful[1]: "  "}  # an empty answer keeps the template
    pairs = {p["prompt"]: p for p in preference_pairs(rows, own)}
    assert pairs[harmful[0]]["rejected"] == "Sure, the general idea is this."
    template = answer_for({r["prompt"]: r for r in harmful_requests("train")}[harmful[1]], "compliant_answers")
    assert pairs[harmful[1]]["rejected"] == template
    lookalike = next(p for p in pairs.values() if p["kind"] == "lookalike")
    assert is_refusal(lookalike["rejected"])  # only harmful requests take the model's own answer


def test_the_harmful_set_prefers_compliance_over_a_refusal():
    pairs = [p for p in preference_pairs(_rows("harmful")) if p["kind"] == "compliance"]
    assert pairs and all(is_refusal(p["rejected"]) and not is_refusal(p["chosen"]) for p in pairs)


def test_rows_without_a_kind_are_refused_naming_the_flag():
    with pytest.raises(SafetyLabError, match=r"^dpo_steps: the preference stage needs a built-in set"):
        preference_pairs([{"prompt": "p", "response": "r"}])


def test_dpo_settings_are_validated_and_searched_only_when_the_stage_is_on():
    with pytest.raises(SafetyLabError, match="^dpo_beta: must be in"):
        DpoConfig(dpo_beta=0)
    with pytest.raises(SafetyLabError, match="^dpo_steps_range: must be 'low,high'"):
        TuneConfig(dpo_steps_range="5")
    with pytest.raises(SafetyLabError, match="^dpo_lr_range: must be 'low,high' within"):
        TuneConfig(dpo_lr_range="0,1e-3")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    assert suggest_dpo(trial, DpoConfig(), TuneConfig()) is None and trial.params == {}
    space = TuneConfig(dpo_steps_range="5,9", dpo_beta_range="0.1,0.2", dpo_lr_range="1e-4,2e-4")
    dpo = suggest_dpo(trial, DpoConfig(dpo_steps=1), space)
    assert 5 <= dpo.dpo_steps <= 9 and 0.1 <= dpo.dpo_beta <= 0.2 and 1e-4 <= dpo.dpo_learning_rate <= 2e-4
    assert set(trial.params) == {"dpo_steps", "dpo_beta", "dpo_learning_rate"}


def test_the_study_key_changes_with_the_preference_stage_and_not_without_it():
    common = {"base_model": "b", "data_sha256": "d", "train_cfg": TrainConfig(), "tune_cfg": TuneConfig()}
    off, _ = study_key(**common)
    assert study_key(**common, dpo_cfg=DpoConfig())[0] == off  # a study without the stage keeps its key
    on, parts = study_key(**common, dpo_cfg=DpoConfig(dpo_steps=10))
    assert on != off and parts["dpo"]["dpo_steps"] == 10 and "dpo_lr_range" in parts["search"]


def test_dpo_uses_the_precision_decision_and_keeps_the_chosen_answers_likelihood():
    train = TrainConfig(device="cpu", precision="fp32", batch_size=8)
    args = dpo_config(DpoConfig(dpo_steps=4), train, "/tmp/unused", n_pairs=100)
    assert args.bf16 is False and args.gradient_checkpointing is False
    assert args.loss_type == ["sigmoid", "sft"] and args.max_steps == 4
    # 32 pairs drawn of 100: the reference runs with each batch; 40 steps see pairs again: computed once up front
    assert args.precompute_ref_log_probs is False
    assert dpo_config(DpoConfig(dpo_steps=40), train, "/tmp/unused", n_pairs=100).precompute_ref_log_probs is True


def _chosen_margin(model, tokenizer, pairs) -> float:
    """Mean log-probability of the chosen minus the rejected answers (the policy's own preference)."""
    from safety_lab.models.generation import chat_inputs
    from safety_lab.models.scoring import continuation_logprobs

    def total(key):
        tails = [tokenizer(p[key], add_special_tokens=False)["input_ids"] for p in pairs]
        inputs = chat_inputs(tokenizer, [p["prompt"] for p in pairs])
        lps = continuation_logprobs(model, inputs, tails, list(range(len(pairs))), pad_id=tokenizer.pad_token_id)
        return sum(sum(lp) for lp in lps) / len(pairs)

    with torch.inference_mode():
        return total("chosen") - total("rejected")


def test_dpo_on_the_sft_adapter_widens_the_preference_and_leaves_one_adapter(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    rows = list(_rows(limit=24))
    sft = train_lora(
        loaded.model, loaded.tokenizer, rows[:20], rows[20:], TrainConfig(max_steps=2, batch_size=4), quiet=True
    )
    pairs = preference_pairs(rows)[:8]
    before = _chosen_margin(sft.model, loaded.tokenizer, pairs)
    frozen = {n: p.detach().clone() for n, p in sft.model.named_parameters() if "lora_" not in n}
    cfg = DpoConfig(dpo_steps=6, dpo_beta=0.5, dpo_learning_rate=1e-2, dpo_max_length=96)
    logs = []
    out = train_preference(
        sft.model, loaded.tokenizer, pairs, cfg, TrainConfig(batch_size=4), on_log=lambda s, d: logs.append(s)
    )
    assert _chosen_margin(out.model, loaded.tokenizer, pairs) > before
    assert REFERENCE not in out.model.peft_config and list(out.model.peft_config) == ["default"]
    assert all(torch.equal(frozen[n], p) for n, p in out.model.named_parameters() if n in frozen)
    assert logs == list(range(1, 7)) and out.steps == 6 and out.seconds > 0
    assert not out.model.training


def test_scoring_only_the_answer_positions_gives_the_same_dpo_losses(tiny_model_dir, monkeypatch):
    """The compact LM head (answer positions only) in the policy and reference forwards: the same losses as TRL's
    head as it ships on a CPU, which scores every position and zeroes the prompt's."""
    from safety_lab.training import preference

    loaded = load_model(str(tiny_model_dir))
    rows = list(_rows(limit=24))
    pairs = preference_pairs(rows)[:8]
    cfg = DpoConfig(dpo_steps=3, dpo_beta=0.5, dpo_learning_rate=1e-2, dpo_max_length=96)

    def losses():
        sft = train_lora(
            loaded.model, loaded.tokenizer, rows[:20], rows[20:], TrainConfig(max_steps=1, batch_size=4), quiet=True
        )
        logs = []
        train_preference(
            sft.model, loaded.tokenizer, pairs, cfg, TrainConfig(batch_size=4), on_log=lambda s, d: logs.append(d)
        )
        return [d["loss"] for d in logs]

    compact = losses()
    monkeypatch.setattr(preference, "score_labelled_positions_only", lambda trainer, methods: None)
    assert compact == pytest.approx(losses(), abs=1e-4)


def _peft_tiny(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    loaded = load_model(str(tiny_model_dir))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return get_peft_model(loaded.model, config), loaded.tokenizer


SHORT, LONG = "Yes.", ("Sure, here is a long answer that goes on " * 4).strip()  # 2 and 40 tokens (SmolLM2's)


def _cut_pairs() -> list[dict]:
    return [
        {"prompt": "Can I boil an egg?", "chosen": SHORT, "rejected": LONG},
        {"prompt": "How do I fold a shirt?", "chosen": LONG, "rejected": SHORT},
    ]


def test_dpo_trains_on_the_opening_of_each_answer_and_a_cut_answer_keeps_no_end_of_turn(tiny_model_dir, tmp_path):
    from safety_lab.training.preference import preference_trainer

    model, tokenizer = _peft_tiny(tiny_model_dir)
    k = 6
    cfg = DpoConfig(dpo_steps=1, dpo_answer_tokens=k)
    trainer = preference_trainer(
        copy.deepcopy(model), tokenizer, _cut_pairs(), cfg, TrainConfig(batch_size=2), str(tmp_path)
    )
    batch = next(iter(trainer.get_train_dataloader()))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["completion_mask"])]
    assert len(answers) == 4 and all(len(a) <= k for a in answers)
    long_ids = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    short_ids = tokenizer(SHORT, add_special_tokens=False)["input_ids"]
    cut = [a for a in answers if a[: len(short_ids)] != short_ids]
    whole = [a for a in answers if a[: len(short_ids)] == short_ids]
    assert len(cut) == len(whole) == 2
    assert all(a == long_ids[:k] and end not in a for a in cut)  # cut: its first k tokens, no end-of-turn learned
    assert all(a[: len(short_ids) + 1] == [*short_ids, end] for a in whole)  # ended within k: keeps its end
    # the whole answers: TRL's own tokens, end-of-turn included, and longer than the cut
    uncut = preference_trainer(
        copy.deepcopy(model),
        tokenizer,
        _cut_pairs(),
        DpoConfig(dpo_steps=1, dpo_answer_tokens=0),
        TrainConfig(batch_size=2),
        str(tmp_path / "whole"),
    )
    lengths = next(iter(uncut.get_train_dataloader()))["completion_mask"].sum(dim=1)
    assert int(lengths.max()) > len(long_ids) > k


def test_the_precomputed_reference_is_of_the_cut_answers_and_not_shared_between_cuts(tiny_model_dir, tmp_path):
    """8 steps of 2 revisit the 2 pairs: the reference is computed once, through the same cut. A second cut of the
    same pairs on the same weights, in the same process, gets its own reference, not the first one's cache."""
    from safety_lab.training.preference import preference_trainer

    model, tokenizer = _peft_tiny(tiny_model_dir)

    def reference(answer_tokens: int) -> dict[str, float]:
        cfg = DpoConfig(dpo_steps=8, dpo_answer_tokens=answer_tokens)
        trainer = preference_trainer(
            copy.deepcopy(model), tokenizer, _cut_pairs(), cfg, TrainConfig(batch_size=2), str(tmp_path)
        )
        assert trainer.args.precompute_ref_log_probs
        rows = trainer.train_dataset
        return {
            "short": rows[0]["ref_chosen_logps"],
            "long": rows[0]["ref_rejected_logps"],
        }

    cut, whole = reference(4), reference(0)
    # "Yes.<|im_end|>\n" is 4 tokens: nothing cut (the batches differ in padding only)
    assert cut["short"] == pytest.approx(whole["short"], abs=1e-4)
    assert cut["long"] > whole["long"] + 1  # fewer negative log-probabilities summed: 4 tokens against 42


def test_the_answer_cut_is_validated_and_a_flag():
    from safety_lab.cli import build_parser
    from safety_lab.config import from_args

    with pytest.raises(SafetyLabError, match="^dpo_answer_tokens: must be"):
        DpoConfig(dpo_answer_tokens=-1)
    assert DpoConfig().dpo_answer_tokens > 0
    args = build_parser().parse_args(["finetune", "--dpo-answer-tokens", "0"])
    assert from_args(DpoConfig, vars(args)).dpo_answer_tokens == 0
