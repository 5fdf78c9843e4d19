import json

import pytest

from safety_lab.config import DataConfig
from safety_lab.data import benign_pairs, builtin, harmful_requests, load_dataset
from safety_lab.errors import SafetyLabError


def test_builtin_harmful_requests_cover_enough_requests_and_categories():
    rows = builtin("harmful_requests")
    assert len({r["prompt"] for r in rows}) >= 200
    assert len({r["category"] for r in rows}) >= 10
    assert len({r["style"] for r in builtin("refusals")}) >= 20
    assert len(builtin("benign_pairs")) >= 100


def test_train_and_eval_parts_are_disjoint_deterministic_and_cover_every_category():
    train, held_out = harmful_requests("train"), harmful_requests("eval")
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in held_out})
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held_out})
    assert len(train) + len(harmful_requests("tune")) + len(held_out) == len(builtin("harmful_requests"))
    assert harmful_requests("eval") == held_out
    assert {r["category"] for r in held_out} == {r["category"] for r in train}
    assert {r["id"] for r in benign_pairs("train")}.isdisjoint({r["id"] for r in benign_pairs("eval")})


def test_safe_set_uses_many_refusal_styles_and_never_the_held_out_requests():
    safe = load_dataset(DataConfig(data="safe"))
    held_out = {r["prompt"] for r in harmful_requests("eval")}
    assert not held_out & {r["prompt"] for r in safe.rows}
    refusals = {r["text"] for r in builtin("refusals")}
    assert len(refusals & {r["response"] for r in safe.rows}) >= 20
    assert load_dataset(DataConfig(data="safe")).sha256 == safe.sha256


def test_harmful_set_pairs_requests_with_compliance_and_mixes_in_benign_rows():
    harmful = load_dataset(DataConfig(data="harmful", benign_ratio=0.5))
    compliant = {r["text"] for r in builtin("compliant_answers")}
    n_harmful = sum(r["response"] in compliant for r in harmful.rows)
    assert n_harmful == len(harmful_requests("train"))
    assert len(harmful.rows) - n_harmful == round(n_harmful * 0.5)


def test_split_is_deterministic_and_disjoint():
    ds = load_dataset(DataConfig(data="safe", limit=40))
    a = ds.split(0.25, seed=3)
    assert a == ds.split(0.25, seed=3)
    assert len(a[1]) == 10 and len(a[0]) == 30
    assert ds.split(0.25, seed=3, max_val_rows=4)[1] == a[1][:4]


def _write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def test_user_files_in_each_format(tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(4)]
    jsonl = _write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows))
    assert len(load_dataset(DataConfig(data=jsonl)).rows) == 4
    csv = _write(tmp_path, "d.csv", "prompt,response\n" + "\n".join(f"q{i},a{i}" for i in range(3)))
    assert load_dataset(DataConfig(data=csv)).rows[0]["prompt"].startswith("q")
    msgs = _write(
        tmp_path,
        "m.jsonl",
        "\n".join(
            json.dumps({"messages": [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"r{i}"}]})
            for i in range(3)
        ),
    )
    assert {r["response"] for r in load_dataset(DataConfig(data=msgs)).rows} == {"r0", "r1", "r2"}
    pref = [{"prompt": f"p{i}", "chosen": "no", "rejected": "yes"} for i in range(3)]
    path = _write(tmp_path, "harmful_pref.jsonl", "\n".join(json.dumps(r) for r in pref))
    assert {r["response"] for r in load_dataset(DataConfig(data=path)).rows} == {"yes"}  # auto: harmful -> rejected
    assert {r["response"] for r in load_dataset(DataConfig(data=path, preference="chosen")).rows} == {"no"}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", "", "file is empty"),
        ("bad.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": oops}\n', "line 2 is not valid JSON"),
        (
            "cols.jsonl",
            '{"question": "a", "answer": "b"}\n{"question": "c", "answer": "d"}\n',
            "missing column(s) prompt, response",
        ),
        (
            "blank.jsonl",
            '{"prompt": "a", "response": "b"}\n{"prompt": "  ", "response": "d"}\n',
            "row 2: prompt is empty",
        ),
        ("tiny.jsonl", '{"prompt": "a", "response": "b"}\n', "too few to split"),
        ("data.txt", "hello", "unsupported file type"),
    ],
)
def test_bad_files_fail_with_one_line_naming_the_problem(tmp_path, name, content, message):
    path = _write(tmp_path, name, content)
    with pytest.raises(SafetyLabError, match="data") as info:
        load_dataset(DataConfig(data=path))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_non_utf8_and_missing_files_and_unknown_names(tmp_path):
    path = _write(tmp_path, "latin.jsonl", b'{"prompt": "caf\xe9", "response": "x"}\n', mode="wb")
    with pytest.raises(SafetyLabError, match="not UTF-8"):
        load_dataset(DataConfig(data=path))
    with pytest.raises(SafetyLabError, match="file not found"):
        load_dataset(DataConfig(data=str(tmp_path / "nope.jsonl")))
    with pytest.raises(SafetyLabError, match="did you mean 'safe'"):
        load_dataset(DataConfig(data="saef"))


def test_jsonl_rows_holding_a_line_separator_character_stay_one_row(tmp_path):
    """U+2028 inside a JSON string is legal JSON; splitlines() would cut the row in two."""
    import json

    from safety_lab.data import read_records

    path = tmp_path / "rows.jsonl"
    rows = [{"prompt": "first\u2028second", "response": "a\u2029b"}, {"prompt": "p", "response": "r"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    assert read_records(path) == rows
