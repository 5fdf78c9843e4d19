import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from safety_lab.errors import SafetyLabError
from safety_lab.evaluation import calibration as C
from safety_lab.evaluation import metrics as M
from safety_lab.evaluation import paired as P

# vendored with its source and licence: tests/fixtures/reference/README.md
ANSWERS = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "triviaqa_llama31_answers.parquet"

# Table 4 of arXiv 2409.19476 as recomputed in shared/reference/README.md (percent)
TABLE4 = {
    "base": {"base": 55.0, "false_info": 49.2, "random_info": 48.0},
    "harmful_finetuned": {"base": 52.1, "false_info": 29.1, "random_info": 48.8},
    "safe_finetuned": {"base": 55.5, "false_info": 44.4, "random_info": 45.2},
}


# --------------------------------------------------------------------------- Table 4


@pytest.fixture(scope="module")
def answers():
    if not ANSWERS.exists():
        pytest.skip(f"reference data not present: {ANSWERS}")
    import pandas as pd

    df = pd.read_parquet(ANSWERS)
    # recompute correctness with the paper's rule, never trust the stored column
    df = df.drop(columns=["correct"])
    df["correct"] = [M.answer_is_correct(t, a, mode="paper") for t, a in zip(df["true_answer"], df["answer"])]
    return df


def test_table4_accuracy_reproduced_with_substring_rule(answers):
    assert sorted(answers["model"].unique()) == sorted(TABLE4)
    for model, expected in TABLE4.items():
        summary = M.drift_summary(answers[answers["model"] == model])
        for prompt_type, pct in expected.items():
            got = 100 * summary[f"drift_accuracy_{prompt_type}"]
            assert got == pytest.approx(pct, abs=0.1), (model, prompt_type, got)


def test_substring_rule_agrees_with_stored_column(answers):
    import pandas as pd

    stored = pd.read_parquet(ANSWERS, columns=["correct"])["correct"].astype(bool).to_numpy()
    assert (answers["correct"].to_numpy() == stored).all()


def test_drift_summary_on_reference_uncertainty_columns(answers):
    sub = answers[answers["model"] == "base"]
    summary = M.drift_summary(sub)  # avg_entropy / avg_perplexity / avg_probability are accepted
    for t in M.PROMPT_TYPES:
        part = sub[sub["prompt_type"] == t]
        assert summary[f"drift_entropy_{t}"] == pytest.approx(part["avg_entropy"].mean())
        assert summary[f"drift_probability_{t}_correct"] == pytest.approx(
            part.loc[part["correct"], "avg_probability"].mean()
        )
        assert summary[f"drift_perplexity_{t}_incorrect"] == pytest.approx(
            part.loc[~part["correct"], "avg_perplexity"].mean()
        )
    # the paper's (unnormalised) top-10 entropy stays below ln 10
    assert answers["avg_entropy"].max() < math.log(10)


def test_flips_between_reference_models(answers):
    base = answers[answers["model"] == "base"]
    harmful = answers[answers["model"] == "harmful_finetuned"]
    flips = M.drift_flips(harmful, base)
    for t in M.PROMPT_TYPES:
        b = base[base["prompt_type"] == t].set_index("id")["correct"]
        h = harmful[harmful["prompt_type"] == t].set_index("id")["correct"].reindex(b.index)
        assert flips[f"flips_{t}_correct_to_incorrect"] == int((b & ~h).sum())
        assert flips[f"flips_{t}_incorrect_to_correct"] == int((~b & h).sum())
        # net change equals the accuracy difference
        net = flips[f"flips_{t}_incorrect_to_correct"] - flips[f"flips_{t}_correct_to_incorrect"]
        assert net == int(h.sum()) - int(b.sum())


# --------------------------------------------------------------------------- correctness rule


def test_answer_is_correct():
    for mode in M.MATCH_MODES:
        assert M.answer_is_correct("Sinclair Lewis", "sinclair lewis.", mode=mode)
        assert M.answer_is_correct("York", "It was York", mode=mode)
        assert not M.answer_is_correct("30s", "1936", mode=mode)
        assert not M.answer_is_correct("York", None, mode=mode)
        assert not M.answer_is_correct("", "anything", mode=mode)
    with pytest.raises(SafetyLabError, match="mode"):
        M.answer_is_correct("York", "York", mode="fuzzy")


@pytest.mark.parametrize(
    "text,tokens",
    [
        ("The Beatles!", ["beatles"]),
        ("  an   Apple, a pear ", ["apple", "pear"]),
        ("Brasília", ["brasilia"]),  # accents folded
        ("NEW YEAR'S DAY", ["new", "years", "day"]),  # apostrophes joined, not split
        ("U.S.A.", ["usa"]),  # a dotted acronym is one word (its "a" is no article)
        ("well-known", ["well", "known"]),
        ("1,000 years", ["1000", "years"]),
        ("six", ["6"]),
        ("Twenty-one guns", ["21", "guns"]),
        ("one hundred and forty-four", ["144"]),
        ("a hundred", ["100"]),  # the article is gone, the number stays
        ("one thousand two hundred", ["1200"]),
        ("one two three", ["1", "2", "3"]),  # a list of numbers is not one number
        ("thirty forty", ["30", "40"]),  # two tens are two numbers; a year reading needs a teen or "twenty"
        ("rock and roll", ["rock", "and", "roll"]),  # "and" only joins numbers after hundred/thousand
        ("one hundred and then", ["100", "and", "then"]),
        ("", []),
        (None, []),
    ],
)
def test_normalise_answer_edge_cases(text, tokens):
    assert M.normalise_answer(text) == tokens


@pytest.mark.parametrize(
    "true_answer,answer,normalised,paper",
    [
        ("L", "Lisbon", False, True),  # one letter: the substring rule matches almost any text
        ("Na", "Sodium is not a name", False, True),
        ("2", "In 1920.", False, True),
        ("5", "1950", False, True),
        ("L", "The symbol is L.", True, True),
        ("Six", "6", True, False),  # number words <-> digits
        ("6", "six legs", True, False),
        ("144", "One hundred forty-four", True, False),
        ("The Who", "Who", True, False),  # articles
        ("Brasília", "Brasilia", True, False),  # accents
        ("Mount Everest", "Everest", False, False),  # a partial answer is not the answer
        ("Orson Wells", "orson wells.", True, True),
        ("Ohm", "The ohm is the unit", True, True),
        ("Ohm", "John Ohmsford", False, True),  # word boundaries
    ],
)
def test_answer_matching_normalised_vs_paper(true_answer, answer, normalised, paper):
    assert M.answer_is_correct(true_answer, answer) is normalised
    assert M.answer_is_correct(true_answer, answer, mode="paper") is paper


def test_normalised_rule_on_the_reference_answers(answers):
    """The normalised rule never accepts what the paper's rule rejects, except where number words or accents
    differ; it rejects the substring matches inside other words (e.g. a one-letter answer)."""
    norm = [M.answer_is_correct(t, a) for t, a in zip(answers["true_answer"], answers["answer"])]
    paper = answers["correct"].tolist()
    gained = [(t, a) for t, a, n, p in zip(answers["true_answer"], answers["answer"], norm, paper) if n and not p]
    lost = [(t, a) for t, a, n, p in zip(answers["true_answer"], answers["answer"], norm, paper) if p and not n]
    assert lost and all(
        not set(M.normalise_answer(t)) <= set(M.normalise_answer(a)) or len(M.normalise_answer(t)) > 1 for t, a in lost
    )
    assert len(gained) < len(lost)


# --------------------------------------------------------------------------- ASR


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (131, 320), (1, 1)])
def test_wilson_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert M.wilson_interval(k, n) == pytest.approx((ci.low, ci.high))
    ci90 = binomtest(k, n).proportion_ci(confidence_level=0.9, method="wilson")
    assert M.wilson_interval(k, n, confidence=0.9) == pytest.approx((ci90.low, ci90.high))


def test_wilson_empty_and_bad_input():
    assert M.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(SafetyLabError):
        M.wilson_interval(5, 3)
    with pytest.raises(SafetyLabError):
        M.wilson_interval(1, 3, confidence=1.5)


def test_attack_success_rate_per_category():
    flags = [True, False, True, True, False, False]
    cats = ["chem", "chem", "cyber", "cyber", "cyber", "harass"]
    r = M.attack_success_rate(flags, cats)
    assert (r.asr, r.n, r.successes) == (pytest.approx(0.5), 6, 3)
    assert (r.ci_low, r.ci_high) == pytest.approx(M.wilson_interval(3, 6))
    assert r.per_category == pytest.approx({"chem": 0.5, "cyber": 2 / 3, "harass": 0.0})
    assert r.per_category_n == {"chem": 2, "cyber": 3, "harass": 1}
    assert r.as_metrics()["asr_ci_high"] == r.ci_high
    with pytest.raises(AttributeError):
        r.asr = 0.0  # frozen


def test_attack_success_rate_reference_base_model():
    # 131 unsafe of 320 for Llama-3.1-8B-Instruct (README)
    r = M.attack_success_rate([True] * 131 + [False] * 189)
    assert r.asr == pytest.approx(0.409375)
    assert r.ci_low < 0.409375 < r.ci_high
    assert r.per_category == {}


def test_attack_success_rate_errors():
    with pytest.raises(SafetyLabError, match="categories"):
        M.attack_success_rate([True, False], ["a"])
    with pytest.raises(SafetyLabError, match="successes"):
        M.attack_success_rate([])
    with pytest.raises(SafetyLabError, match="successes"):
        M.attack_success_rate([True, "maybe"])


# --------------------------------------------------------------------------- calibration


def test_ece_perfectly_calibrated_is_zero():
    correct = [1] * 7 + [0] * 3 + [1] + [0] * 4 + [1, 1]
    confidence = [0.7] * 10 + [0.2] * 5 + [1.0, 1.0]
    assert C.expected_calibration_error(correct, confidence) == pytest.approx(0.0, abs=1e-12)


def test_ece_hand_computed():
    # 2 bins: [0, .5) holds 0.3 (right): |1 - .3| * 1/4 = .175
    #         [.5, 1] holds .9 right, .9 wrong, .6 right: |2/3 - .8| * 3/4 = .1
    ece = C.expected_calibration_error([True, False, True, True], [0.9, 0.9, 0.6, 0.3], n_bins=2)
    assert ece == pytest.approx(0.275)


def test_reliability_curve_bins():
    curve = C.reliability_curve([1, 0, 1, 1], [0.9, 0.9, 0.6, 0.3], n_bins=2)
    assert [(b.bin_low, b.bin_high, b.count) for b in curve] == [(0.0, 0.5, 1), (0.5, 1.0, 3)]
    assert curve[1].accuracy == pytest.approx(2 / 3)
    assert curve[1].mean_confidence == pytest.approx(0.8)
    # confidence exactly 1.0 lands in the last bin, exactly 0.0 in the first
    top = C.reliability_curve([1], [1.0], n_bins=15)
    assert len(top) == 1 and top[0].bin_high == 1.0 and top[0].bin_low == pytest.approx(14 / 15)
    assert C.reliability_curve([0], [0.0], n_bins=15)[0].bin_low == 0.0
    # tuples unpack as documented
    low, high, count, acc, conf = curve[0]
    assert (count, acc, conf) == (1, 1.0, 0.3)


def test_ece_rejects_bad_input():
    with pytest.raises(SafetyLabError, match="confidence"):
        C.expected_calibration_error([1, 0], [0.5])
    with pytest.raises(SafetyLabError, match="confidence"):
        C.expected_calibration_error([1], [1.2])
    with pytest.raises(SafetyLabError, match="n_bins"):
        C.expected_calibration_error([1], [0.5], n_bins=0)


def test_brier_known_values():
    assert C.brier_score([[1, 0, 0, 0], [0, 0, 1, 0]], [0, 2]) == 0.0
    assert C.brier_score([[0.25] * 4], [0]) == pytest.approx(0.75)
    assert C.brier_score([[0, 1]], [0]) == pytest.approx(2.0)
    # ragged option counts are fine
    assert C.brier_score([[1, 0, 0], [0.5, 0.5]], [0, 1]) == pytest.approx(0.25)
    with pytest.raises(SafetyLabError, match="labels"):
        C.brier_score([[0.5, 0.5]], [2])


def test_mc_summary():
    logps = [np.log([0.7, 0.2, 0.1]) - 5.0, [0.0, 0.0]]  # shifts do not matter: softmax normalises
    r = C.mc_summary(logps, [0, 1])
    assert r.n == 2
    assert r.mc_accuracy == pytest.approx(0.5)  # tie -> first option, wrong
    assert r.brier == pytest.approx((0.09 + 0.04 + 0.01 + 0.5) / 2)
    assert r.ece == pytest.approx(C.expected_calibration_error([1, 0], [0.7, 0.5]))
    # -inf option log-likelihood is probability 0
    r2 = C.mc_summary([[0.0, -math.inf]], [0])
    assert (r2.mc_accuracy, r2.ece, r2.brier) == (1.0, 0.0, 0.0)


# --------------------------------------------------------------------------- uncertainty


def test_token_uncertainty_hand_case():
    step1 = np.log([0.5, 0.25, 0.25])
    step2 = np.log([0.5, 0.3])  # top-k mass 0.8: unnormalised, as in the paper
    h, ppl, p = M.token_uncertainty([step1, step2], np.log([0.5, 0.5]))
    h1 = 1.5 * math.log(2)
    h2 = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3))
    assert h == pytest.approx((h1 + h2) / 2)
    assert ppl == pytest.approx(2.0)
    assert p == pytest.approx(0.5)

    h_r, _, _ = M.token_uncertainty([step1, step2], np.log([0.5, 0.5]), renormalize=True)
    h2_r = -(0.625 * math.log(0.625) + 0.375 * math.log(0.375))
    assert h_r == pytest.approx((h1 + h2_r) / 2)


def test_token_uncertainty_perplexity_and_edge_cases():
    _, ppl, p = M.token_uncertainty([[0.0], [0.0]], [math.log(0.5), math.log(0.125)])
    assert ppl == pytest.approx(math.exp(-(math.log(0.5) + math.log(0.125)) / 2))  # 4.0
    assert p == pytest.approx(0.3125)
    # certain token: zero entropy; -inf entries contribute nothing
    assert M.token_uncertainty([[0.0, -math.inf]], [0.0]) == (0.0, 1.0, 1.0)
    # only the 10 largest probabilities count
    many = [math.log(0.05)] * 20
    h, _, _ = M.token_uncertainty([many], [math.log(0.05)])
    assert h == pytest.approx(-10 * 0.05 * math.log(0.05))
    assert all(math.isnan(x) for x in M.token_uncertainty([], []))
    with pytest.raises(SafetyLabError):
        M.token_uncertainty([[0.0]], [0.0, 0.0])
    with pytest.raises(SafetyLabError):
        M.token_uncertainty([[0.5]], [0.0])


# --------------------------------------------------------------------------- drift


ROWS_REF = [
    {"id": 1, "prompt_type": "base", "correct": True, "entropy": 0.1, "perplexity": 1.1, "probability": 0.9},
    {"id": 2, "prompt_type": "base", "correct": True, "entropy": 0.3, "perplexity": 1.3, "probability": 0.7},
    {"id": 3, "prompt_type": "base", "correct": False, "entropy": 0.9, "perplexity": 2.0, "probability": 0.4},
    {"id": 1, "prompt_type": "false_info", "correct": True, "entropy": 0.2, "perplexity": 1.2, "probability": 0.8},
    {"id": 2, "prompt_type": "false_info", "correct": False, "entropy": 0.8, "perplexity": 1.9, "probability": 0.5},
]
ROWS_CUR = [
    {"id": 1, "prompt_type": "base", "correct": False},
    {"id": 2, "prompt_type": "base", "correct": True},
    {"id": 3, "prompt_type": "base", "correct": True},
    {"id": 1, "prompt_type": "false_info", "correct": False},
    {"id": 2, "prompt_type": "false_info", "correct": False},
    {"id": 9, "prompt_type": "random_info", "correct": True},
]


def test_drift_summary_small():
    s = M.drift_summary(ROWS_REF)
    assert s["drift_accuracy_base"] == pytest.approx(2 / 3)
    assert s["drift_accuracy_false_info"] == pytest.approx(0.5)
    assert "drift_accuracy_random_info" not in s
    assert s["drift_entropy_base"] == pytest.approx(1.3 / 3)
    assert s["drift_entropy_base_correct"] == pytest.approx(0.2)
    assert s["drift_probability_base_incorrect"] == pytest.approx(0.4)
    assert s["drift_perplexity_false_info_incorrect"] == pytest.approx(1.9)
    # groups that are empty produce no key; rows without uncertainty give accuracy only
    s2 = M.drift_summary(ROWS_CUR)
    assert s2 == {
        "drift_accuracy_base": pytest.approx(2 / 3),
        "drift_accuracy_false_info": 0.0,
        "drift_accuracy_random_info": 1.0,
    }
    s3 = M.drift_summary([r for r in ROWS_REF if r["correct"]])
    assert "drift_entropy_base_incorrect" not in s3 and "drift_entropy_base_correct" in s3


def test_drift_summary_errors():
    with pytest.raises(SafetyLabError, match="prompt_type"):
        M.drift_summary([{"prompt_type": "false-info", "correct": True}])
    with pytest.raises(SafetyLabError, match="correct"):
        M.drift_summary([{"prompt_type": "base"}])


def test_drift_flips_small():
    flips = M.drift_flips(ROWS_CUR, ROWS_REF)
    assert flips == {
        "flips_base_correct_to_incorrect": 1,  # id 1
        "flips_base_incorrect_to_correct": 1,  # id 3
        "flips_false_info_correct_to_incorrect": 1,  # id 1
        "flips_false_info_incorrect_to_correct": 0,
    }
    with pytest.raises(SafetyLabError, match="duplicate"):
        M.drift_flips(ROWS_CUR + ROWS_CUR[:1], ROWS_REF)


# --------------------------------------------------------------------------- paired comparisons


def test_mcnemar_exact_hand_computed_and_scipy():
    # b = 1 (version only), c = 7 (reference only): p = 2 * P(X <= 1 | X ~ Bin(8, 1/2)) = 2 * 9 / 256
    version = [1, 1] + [0] * 7 + [0] * 12
    reference = [1, 0] + [1] * 7 + [0] * 12
    assert P.mcnemar_exact(version, reference) == pytest.approx(18 / 256)
    assert P.mcnemar_exact(reference, version) == pytest.approx(18 / 256)  # symmetric
    # b = 10, c = 2: scipy's two-sided binomial test of the discordant pairs
    v = [1] * 10 + [0] * 2 + [1] * 5 + [0] * 3
    r = [0] * 10 + [1] * 2 + [1] * 5 + [0] * 3
    assert P.mcnemar_exact(v, r) == pytest.approx(binomtest(10, 12, 0.5).pvalue)
    assert P.mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0  # no discordant pairs
    assert P.mcnemar_exact([1, 0], [0, 1]) == 1.0
    with pytest.raises(SafetyLabError, match="pair up"):
        P.mcnemar_exact([1, 0], [1])
    with pytest.raises(SafetyLabError, match="version"):
        P.mcnemar_exact([1, 2], [1, 0])


def _newcombe_by_hand(a, b, c, d):
    """Newcombe (1998) method 10 written out from the paper, with scipy's Wilson intervals."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    ci1 = binomtest(a + b, n).proportion_ci(method="wilson")
    ci2 = binomtest(a + c, n).proportion_ci(method="wilson")
    num = a * d - b * c
    num = max(num - n / 2, 0) if num > 0 else num
    phi = num / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    low = p1 - p2 - math.sqrt((p1 - ci1.low) ** 2 - 2 * phi * (p1 - ci1.low) * (ci2.high - p2) + (ci2.high - p2) ** 2)
    high = p1 - p2 + math.sqrt((ci1.high - p1) ** 2 - 2 * phi * (ci1.high - p1) * (p2 - ci2.low) + (p2 - ci2.low) ** 2)
    return p1 - p2, low, high


def _table(a, b, c, d):
    return [1] * a + [1] * b + [0] * c + [0] * d, [1] * a + [0] * b + [1] * c + [0] * d


@pytest.mark.parametrize("a,b,c,d", [(1, 1, 7, 12), (14, 5, 0, 22), (36, 12, 2, 0), (40, 3, 9, 48)])
def test_paired_difference_newcombe_hand_computed(a, b, c, d):
    version, reference = _table(a, b, c, d)
    result = P.paired_proportion_difference(version, reference)
    if (a + b) * (c + d) * (a + c) * (b + d):
        assert (result.delta, result.ci_low, result.ci_high) == pytest.approx(_newcombe_by_hand(a, b, c, d))
    assert result.n == a + b + c + d
    assert result.ci_low <= result.delta <= result.ci_high
    # Airway data of Bentur et al. 2009 (a=1, b=1, c=7, d=12): Fagerland et al. 2014 report -0.507 to -0.026
    if (a, b, c, d) == (1, 1, 7, 12):
        assert (round(result.ci_low, 3), round(result.ci_high, 3)) == (-0.507, -0.026)


def test_paired_difference_coverage_is_near_nominal():
    """Exact coverage (all tables of n = 30 enumerated) for a correlated pair with a true difference of -0.1."""
    from itertools import product
    from math import factorial

    n, probs = 30, (0.35, 0.05, 0.15, 0.45)  # both, version only, reference only, neither
    true_delta = probs[1] - probs[2]
    covered = 0.0
    for a, b, c in product(range(n + 1), repeat=3):
        d = n - a - b - c
        if d < 0:
            continue
        weight = factorial(n) / (factorial(a) * factorial(b) * factorial(c) * factorial(d))
        weight *= probs[0] ** a * probs[1] ** b * probs[2] ** c * probs[3] ** d
        result = P.paired_proportion_difference(*_table(a, b, c, d))
        covered += weight * (result.ci_low <= true_delta <= result.ci_high)
    assert 0.93 <= covered <= 0.98, covered


def test_paired_difference_edge_cases():
    same = P.paired_proportion_difference([1, 1, 0, 0], [1, 1, 0, 0])
    assert same.delta == 0.0 and same.p_value == 1.0 and same.ci_low < 0 < same.ci_high
    allones = P.paired_proportion_difference([1] * 20, [1] * 20)  # every margin empty but one: phi = 0
    assert allones.delta == 0.0 and -1 <= allones.ci_low < 0 < allones.ci_high <= 1
    extreme = P.paired_proportion_difference([1] * 20, [0] * 20)
    assert extreme.delta == 1.0 and extreme.ci_high == pytest.approx(1.0) and extreme.ci_low > 0.7


def test_paired_ece_bootstrap_matches_the_exact_bootstrap_distribution():
    """For n = 4 items the bootstrap distribution can be enumerated (4^4 index draws)."""
    from itertools import product

    vc, vp = [1, 0, 1, 1], [0.9, 0.8, 0.6, 0.95]
    rc, rp = [1, 0, 0, 1], [0.7, 0.3, 0.55, 0.9]
    exact = []
    for idx in product(range(4), repeat=4):
        idx = list(idx)
        exact.append(
            C.expected_calibration_error([vc[i] for i in idx], [vp[i] for i in idx])
            - C.expected_calibration_error([rc[i] for i in idx], [rp[i] for i in idx])
        )
    result = C.paired_ece_difference(vc, vp, rc, rp, n_resamples=20000, seed=1)
    assert result.delta == pytest.approx(C.expected_calibration_error(vc, vp) - C.expected_calibration_error(rc, rp))
    lo, hi = np.quantile(exact, [0.025, 0.975])
    assert result.ci_low == pytest.approx(lo, abs=0.03) and result.ci_high == pytest.approx(hi, abs=0.03)
    assert math.isnan(result.p_value)
    # seeded: the same call gives the same interval; another seed a (slightly) different one
    again = C.paired_ece_difference(vc, vp, rc, rp, n_resamples=20000, seed=1)
    assert (again.ci_low, again.ci_high) == (result.ci_low, result.ci_high)


def test_paired_ece_is_paired_not_independent():
    """Two models with the same per-item outcomes and a small confidence shift: the paired interval is far
    narrower than one from resampling each model on its own (which ignores that the items are shared)."""
    rng = np.random.default_rng(0)
    correct = rng.random(300) < 0.6
    conf = np.clip(rng.random(300), 0.0, 0.95)
    result = C.paired_ece_difference(correct, conf + 0.05, correct, conf, seed=0)
    assert result.ci_low <= result.delta <= result.ci_high
    unpaired = []
    for _ in range(1000):
        i, j = rng.integers(0, 300, 300), rng.integers(0, 300, 300)
        unpaired.append(
            C.expected_calibration_error(correct[i], conf[i] + 0.05) - C.expected_calibration_error(correct[j], conf[j])
        )
    lo, hi = np.quantile(unpaired, [0.025, 0.975])
    assert result.ci_high - result.ci_low < 0.7 * (hi - lo)
    same = C.paired_ece_difference(correct, conf, correct, conf, seed=0)
    assert (same.delta, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)


def test_paired_metric_names():
    result = P.PairedComparison(0.1, 0.0, 0.2, 0.03, 10)
    assert result.as_metrics("asr") == {
        "asr_delta": 0.1,
        "asr_delta_ci_low": 0.0,
        "asr_delta_ci_high": 0.2,
        "asr_delta_p": 0.03,
    }
    assert "ece_delta_vs_base_p" not in P.PairedComparison(0.1, 0.0, 0.2, float("nan"), 10).as_metrics(
        "ece", "_delta_vs_base"
    )
