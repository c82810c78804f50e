"""Evaluation inputs: labelled records, splits, label maps and expected targets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evals.dataset import load_records, select_split
from evals.errors import EvalError
from evals.label_map import BASE_MODEL, RouterDomains, expected_targets, load_label_map
from evals.sources import RouterSpec, parse_compare_spec

ROUTER = RouterDomains(
    routable=("code", "math"),
    fallback=frozenset({"general"}),
    label_domains={"algebra": "math", "python": "code", "chit_chat": "general"},
)


def write_lines(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_chat_record_routes_latest_user_turn(tmp_path):
    messages = [
        {"role": "user", "content": "Write a haiku"},
        {"role": "assistant", "content": "Autumn moon..."},
        {"role": "user", "content": [{"type": "text", "text": "Now solve 2x = 8"}]},
    ]
    data = write_lines(tmp_path / "chat.jsonl", [{"messages": messages, "label": "math", "split": "test"}])

    [record] = load_records(data)

    assert record.text == "Now solve 2x = 8"
    assert record.messages == tuple(messages)
    assert record.split == "test"
    assert record.line == 1


def test_blank_lines_keep_line_numbers(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n')

    records = load_records(data)

    assert [record.line for record in records] == [1, 3]


def test_select_missing_split_lists_splits(tmp_path):
    data = write_lines(
        tmp_path / "data.jsonl",
        [{"text": "a", "label": "x", "split": "train"}, {"text": "b", "label": "x", "split": "dev"}],
    )
    records = load_records(data)

    with pytest.raises(EvalError) as raised:
        select_split(records, "test", data)

    assert str(raised.value) == f"{data}: no records with split 'test': use one of dev, train"


def test_non_string_split_is_rejected(tmp_path):
    data = write_lines(tmp_path / "data.jsonl", [{"text": "a", "label": "x", "split": 3}])

    with pytest.raises(EvalError, match=r"data\.jsonl:1: 'split' must be a string"):
        load_records(data)


def test_label_map_plain_layout(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"math": ["algebra", "geometry"], "code": ["python"]}))

    label_map = load_label_map(path, ["python=math"], ["oos"])

    assert label_map.domains == {"algebra": "math", "geometry": "math", "python": "math"}
    assert label_map.fallback_labels == {"oos"}


def test_label_map_nested_layout_with_fallback_labels(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"domains": {"math": ["algebra"]}, "fallback_labels": ["oos", "chit_chat"]}))

    label_map = load_label_map(path)

    assert label_map.domains == {"algebra": "math"}
    assert label_map.fallback_labels == {"oos", "chit_chat"}
    assert label_map.training_domain("algebra") == "math"
    assert label_map.training_domain("oos") == "oos"
    assert label_map.training_domain("unmapped") == "unmapped"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "a label map must be a JSON object"),
        ('{"math": "algebra"}', "domain 'math' must map to a list of label strings"),
        (
            '{"math": ["algebra"], "code": ["algebra"]}',
            "label 'algebra' is listed under domains 'math' and 'code'",
        ),
        ('{"math": [', "map.json:1: invalid JSON"),
    ],
)
def test_invalid_label_map_file(tmp_path, content, message):
    path = tmp_path / "map.json"
    path.write_text(content)

    with pytest.raises(EvalError, match=message):
        load_label_map(path)


def test_invalid_map_assignment():
    with pytest.raises(EvalError, match="invalid --map 'algebra': write LABEL=DOMAIN"):
        load_label_map(None, ["algebra"])


def test_expected_targets_resolution_order(tmp_path):
    data = write_lines(
        tmp_path / "data.jsonl",
        [
            {"text": "a", "label": "algebra"},  # the router's own label map
            {"text": "b", "label": "code"},  # a domain name
            {"text": "c", "label": "chit_chat"},  # a label of a fallback domain
            {"text": "d", "label": "oos"},  # a fallback label
            {"text": "e", "label": "snippet"},  # the label map overrides the router
        ],
    )
    label_map = load_label_map(None, ["snippet=code"], ["oos"])

    targets = expected_targets(load_records(data), label_map, ROUTER, data)

    assert targets == ["math", "code", BASE_MODEL, BASE_MODEL, "code"]


MAIN_SPEC = RouterSpec(name="main", train_split="train")


def test_compare_spec_changes_main_router():
    spec = parse_compare_spec("head=knn,threshold=0.4,name=knn 0.4", MAIN_SPEC)

    assert spec == RouterSpec(name="knn 0.4", train_split="train", head="knn", confidence_threshold=0.4)


def test_compare_spec_without_name_is_named_by_changes():
    spec = parse_compare_spec("confidence_mode=score_x_similarity", MAIN_SPEC)

    assert spec.name is None
    assert spec.display_name() == "trained on train, confidence_mode=score_x_similarity"


def test_compare_spec_new_source_drops_main_source():
    assert parse_compare_spec("config=data:default.yaml", MAIN_SPEC) == RouterSpec(config="data:default.yaml")
    assert parse_compare_spec("other/router", MAIN_SPEC) == RouterSpec(router="other/router")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour=blue", "invalid --compare 'colour=blue' at 'colour=blue': write KEY=VALUE pairs"),
        ("threshold=high", "confidence_threshold must be a number, got 'high'"),
        ("threshold=1.5", "confidence_threshold must be between 0 and 1, got 1.5"),
        ("url=http://127.0.0.1:8000,head=knn", "do not apply to a gateway"),
        ("router=other,head=knn", "head and embedding_model need a router trained here"),
        ("confidence_mode=cosine", "invalid confidence_mode 'cosine'"),
    ],
)
def test_invalid_compare_spec(text, message):
    with pytest.raises(EvalError, match=re.escape(message)):
        parse_compare_spec(text, MAIN_SPEC)
