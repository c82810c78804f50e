"""``adapter-router eval`` and ``calibrate`` end to end, with the real embedding model.

The main runs are real processes, as a user runs them. The error cases and the cheaper runs call
the same ``main`` in this process, which saves starting a Python process that imports PyTorch. The data
is a small labelled fixture (3 domains, 6 labels, train/validation/test splits). The gateway
test evaluates the session's real gateway on 127.0.0.1 through ``POST /v1/route``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from server_process import ServerProcess, free_port

from router.cli import main

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
DATA = FIXTURES / "eval_small.jsonl"
LABEL_MAP = FIXTURES / "eval_label_map.json"
BASE = "(base model)"
TRAIN_ON_FIXTURE = [
    "--train-split",
    "train",
    "--label-map",
    str(LABEL_MAP),
    "--fallback-label",
    "general",
]
FAST_LATENCY = ["--latency-samples", "6", "--batch-size", "4"]
SUMMARY_KEYS = {
    "records",
    "in_domain",
    "expected_fallback",
    "accuracy",
    "macro_f1",
    "in_domain_accuracy",
    "routed_precision",
    "coverage",
    "fallback_precision",
    "fallback_recall",
    "fallback_rate",
    "auroc",
    "ece",
    "aurc",
    "misclassified",
}
PLOTS = ("confusion", "risk_coverage", "reliability", "confidence")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=False,
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the command line in this process; returns what a subprocess run would."""
    returncode = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, returncode, captured.out, captured.err)


def data_lines() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines()]


@pytest.fixture(scope="module")
def json_run(tmp_path_factory) -> tuple[dict, Path]:
    """One eval run with --json, --report and a k-NN comparison, shared by the tests below."""
    report = tmp_path_factory.mktemp("eval") / "report"
    result = run_cli(
        "eval",
        str(DATA),
        "--split",
        "test",
        *TRAIN_ON_FIXTURE,
        *FAST_LATENCY,
        "--compare",
        "head=knn",
        "--json",
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), report


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A router trained on the fixture's train split and calibrated on its validation split."""
    out = tmp_path_factory.mktemp("calibrate") / "router"
    result = run_cli(
        "calibrate",
        str(DATA),
        *TRAIN_ON_FIXTURE,
        "--split",
        "validation",
        "--confidence-mode",
        "score_x_similarity",
        "--target",
        "balance",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    return out, result


def test_eval_json_has_every_metric(json_run):
    results, _ = json_run
    main = results["routers"][0]

    assert results["data"]["records"] == 18
    assert results["data"]["in_domain"] == 15
    assert results["data"]["expected_fallback"] == 3
    assert results["data"]["split"] == "test"
    assert set(main["metrics"]) == SUMMARY_KEYS
    for key in SUMMARY_KEYS - {"records", "in_domain", "expected_fallback", "misclassified"}:
        assert 0.0 <= main["metrics"][key] <= 1.0, key
    assert main["router"]["head"] == "logistic"
    assert main["router"]["fallback_domains"] == ["general"]


def test_eval_json_confusion_matrix_has_base_model_column(json_run):
    main = json_run[0]["routers"][0]
    confusion = main["confusion_matrix"]

    assert confusion["labels"] == ["code", "cooking", "math", BASE]
    assert sum(map(sum, confusion["matrix"])) == 18
    assert [sum(row) for row in confusion["matrix"]] == [6, 3, 6, 3]
    supports = {name: scores["support"] for name, scores in main["per_domain"].items()}
    assert supports == {"code": 6, "cooking": 3, "math": 6, BASE: 3}


def test_eval_json_metrics_agree_with_confusion_matrix(json_run):
    main = json_run[0]["routers"][0]
    matrix = main["confusion_matrix"]["matrix"]
    diagonal = sum(matrix[i][i] for i in range(len(matrix)))

    assert main["metrics"]["accuracy"] == pytest.approx(diagonal / 18)
    assert main["metrics"]["in_domain_accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(3)) / 15)
    assert main["metrics"]["fallback_recall"] == pytest.approx(matrix[3][3] / 3)
    assert main["metrics"]["misclassified"] == 18 - diagonal


def test_eval_json_misclassified_rows_point_at_their_lines(json_run):
    main = json_run[0]["routers"][0]
    lines = data_lines()

    assert len(main["misclassified"]) == main["metrics"]["misclassified"]
    confidences = [row["confidence"] for row in main["misclassified"]]
    assert confidences == sorted(confidences, reverse=True)
    for row in main["misclassified"]:
        assert lines[row["line"] - 1]["label"] == row["label"]
        assert row["expected"] != row["predicted"]


def test_eval_json_latency_has_percentiles(json_run):
    latency = json_run[0]["routers"][0]["latency"]

    assert latency["batch_1"]["calls"] == 6
    assert 0 < latency["batch_1"]["p50_ms"] <= latency["batch_1"]["p95_ms"] <= latency["batch_1"]["p99_ms"]
    assert latency["batched"]["batch_size"] == 4
    assert latency["batched"]["calls"] == 20
    assert latency["batched"]["prompts_per_second"] > 0


def test_eval_compare_adds_a_router(json_run):
    routers = json_run[0]["routers"]

    assert [router["name"] for router in routers] == ["trained on train", "trained on train, head=knn"]
    assert routers[1]["router"]["head"] == "knn"
    assert routers[1]["metrics"]["records"] == 18


def test_eval_report_writes_html_and_valid_pngs(json_run):
    _, report = json_run
    html = (report / "index.html").read_text()
    pngs = sorted(report.glob("*.png"))

    assert {path.name for path in pngs} == {
        "risk_coverage_all.png",
        *(
            f"{prefix}_{plot}.png"
            for prefix in ("trained_on_train", "trained_on_train_head_knn")
            for plot in PLOTS
        ),
    }
    for path in pngs:
        assert f'src="{path.name}"' in html
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width > 300
            assert image.height > 200
    assert json.loads((report / "results.json").read_text())["data"]["records"] == 18


def test_eval_prints_tables(tmp_path, capsys):
    result = run_main(
        capsys,
        "eval",
        str(DATA),
        "--split",
        "test",
        *TRAIN_ON_FIXTURE,
        "--latency-samples",
        "0",
        "--misclassified",
        "2",
    )

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(
        f"data: {DATA}, split test: 18 records (15 in-domain, 3 expected fallback)\n"
        "router: logistic head on all-MiniLM-L6-v2, confidence mode score, confidence threshold 0.5000"
    )
    assert "\nin-domain accuracy (routed to its own adapter)" in out
    assert "\nAUROC of confidence, in-domain vs expected fallback" in out
    assert "\n3 (base model)" in out
    assert "confusion matrix (rows: expected, columns: predicted" in out
    assert "latency" not in out


def test_calibrate_writes_thresholds_and_validation_figures(calibrated):
    out, result = calibrated
    manifest = json.loads((out / "router.json").read_text())
    calibration = manifest["calibration"]

    assert calibration["target"] == "balance"
    assert calibration["split"] == "validation"
    assert calibration["records"] == 18
    assert calibration["expected_fallback"] == 3
    assert calibration["confidence_mode"] == "score_x_similarity"
    assert manifest["confidence_mode"] == "score_x_similarity"
    assert manifest["thresholds"]["confidence"] == calibration["thresholds"]["confidence"]
    assert 0.0 < manifest["thresholds"]["confidence"] < 1.0
    assert manifest["fallback_domains"] == ["general"]
    assert set(calibration["validation"]) >= {"in_domain_accuracy", "fallback_recall", "routed_precision"}
    assert f"wrote {out / 'router.json'}" in result.stdout


def test_eval_of_calibrated_router_reproduces_validation_figures(calibrated, capsys):
    out, _ = calibrated
    figures = json.loads((out / "router.json").read_text())["calibration"]["validation"]

    # No label map: the artifact stores the domain of each fine label.
    result = run_main(
        capsys,
        "eval",
        str(DATA),
        "--router",
        str(out),
        "--split",
        "validation",
        "--fallback-label",
        "general",
        "--json",
    )

    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)["routers"][0]["metrics"]
    for key in ("in_domain_accuracy", "fallback_recall", "routed_precision", "fallback_rate", "accuracy"):
        assert metrics[key] == pytest.approx(figures[key]), key


def _assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"adapter-router: error: {expected}"]


def test_eval_missing_file_error(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"

    result = run_main(capsys, "eval", str(missing), "--train-split", "train", "--split", "test")

    _assert_one_line_error(result, f"data file not found: {missing}: pass a labelled JSONL file")


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            ['{"text": "hi", "label": "general"}', "{not json"],
            "{file}:2: invalid JSON (Expecting property name enclosed in double quotes): "
            "write one JSON object per line",
        ),
        (
            ['{"text": "hi", "label": "general"}', "", '{"label": "math"}'],
            "{file}:3: missing or empty 'text': give every record 'text' or chat 'messages'",
        ),
        (
            ['{"text": "Solve 2x = 4"}'],
            "{file}:1: missing or empty 'label': give every record a string 'label'",
        ),
        (
            ['{"messages": [{"role": "system", "content": "Be brief."}], "label": "math"}'],
            "{file}:1: 'messages' has no user turn: add one or give 'text'",
        ),
    ],
)
def test_eval_bad_record_error(tmp_path, lines, expected, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n")

    result = run_main(capsys, "eval", str(data), "--train-split", "train", "--split", "test")

    _assert_one_line_error(result, expected.format(file=data))


def test_eval_unknown_label_error(tmp_path, calibrated, capsys):
    router, _ = calibrated
    data = tmp_path / "unknown.jsonl"
    data.write_text(
        '{"text": "Solve 2x = 4", "label": "algebra"}\n'
        '{"text": "Will it rain tomorrow?", "label": "weather"}\n'
        '{"text": "Book a table for two", "label": "restaurant"}\n'
    )

    result = run_main(capsys, "eval", str(data), "--router", str(router))

    _assert_one_line_error(
        result,
        f"{data}:2: label 'weather' is not a domain of the router (code, cooking, math), "
        "nor are 1 other labels: map it with --map weather=DOMAIN or --label-map FILE, "
        "or mark it expected fallback with --fallback-label weather",
    )


def test_eval_unknown_mapped_domain_error(tmp_path, calibrated, capsys):
    router, _ = calibrated

    result = run_main(
        capsys, "eval", str(DATA), "--router", str(router), "--split", "test", "--map", "recipe=baking"
    )

    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "label 'recipe' maps to domain 'baking', which is not a domain of the router" in result.stderr


def test_calibrate_train_split_needs_out(capsys):
    result = run_main(capsys, "calibrate", str(DATA), "--train-split", "train")

    _assert_one_line_error(
        result, "--train-split needs --out DIR: the folder to write the trained, calibrated router to"
    )


def test_eval_unreachable_gateway_error(capsys):
    url = f"http://127.0.0.1:{free_port()}"

    result = run_main(capsys, "eval", str(DATA), "--url", url, "--split", "test", "--timeout", "5")

    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"cannot reach the gateway at {url}/v1/route" in result.stderr
    assert "start it with `adapter-router serve` or fix --url" in result.stderr


SKILLS_LABELS = [
    "--map",
    "algebra=math",
    "--map",
    "arithmetic=math",
    "--map",
    "python=code",
    "--map",
    "debugging=code",
    "--fallback-label",
    "recipe",
    "--fallback-label",
    "general",
]


def test_eval_through_gateway_matches_local_router(gateway: ServerProcess):
    config = gateway.command[gateway.command.index("--config") + 1]

    remote = run_cli("eval", str(DATA), "--split", "test", "--url", gateway.url, *SKILLS_LABELS, "--json")
    local = run_cli(
        "eval",
        str(DATA),
        "--split",
        "test",
        "--config",
        config,
        *SKILLS_LABELS,
        "--latency-samples",
        "0",
        "--json",
    )

    assert remote.returncode == 0, remote.stderr
    assert local.returncode == 0, local.stderr
    through_gateway = json.loads(remote.stdout)["routers"][0]
    in_process = json.loads(local.stdout)["routers"][0]
    assert through_gateway["router"]["source"] == {"url": gateway.url}
    assert through_gateway["confusion_matrix"] == in_process["confusion_matrix"]
    for key, value in in_process["metrics"].items():
        assert through_gateway["metrics"][key] == pytest.approx(value, abs=1e-4), key
    assert through_gateway["latency"]["batch_1"]["calls"] == 18
    assert through_gateway["latency"]["gateway_routing"]["calls"] == 18
    assert through_gateway["latency"]["batched"] is None


def test_eval_conversations_per_case_with_and_without_context(tmp_path, capsys):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    conversations = [
        {
            "messages": [
                {"role": "user", "content": "Solve for x: 6x - 4 = 20"},
                {"role": "assistant", "content": "x = 4"},
                {"role": "user", "content": [image]},
            ],
            "label": "algebra",
            "split": "test",
            "case": "image_only",
        },
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Factor x^2 + 5x + 6"}]}],
            "label": "algebra",
            "split": "test",
            "case": "content_parts",
        },
    ]
    data = tmp_path / "conversations.jsonl"
    lines = [line for line in DATA.read_text().splitlines() if '"split": "train"' in line]
    lines += [json.dumps(conversation) for conversation in conversations]
    data.write_text("\n".join(lines) + "\n")

    result = run_main(
        capsys,
        "eval",
        str(data),
        "--split",
        "test",
        *TRAIN_ON_FIXTURE,
        "--latency-samples",
        "0",
        "--group-by",
        "case",
        "--compare",
        "context_turns=0",
        "--json",
    )

    assert result.returncode == 0, result.stderr
    with_context, without_context = json.loads(result.stdout)["routers"]
    assert with_context["router"]["context_turns"] == 3
    assert without_context["router"]["context_turns"] == 0
    assert with_context["groups"]["image_only"] == {"records": 1, "correct": 1, "accuracy": 1.0}
    assert without_context["groups"]["image_only"] == {"records": 1, "correct": 0, "accuracy": 0.0}
    assert with_context["groups"]["content_parts"]["correct"] == 1
