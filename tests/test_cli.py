"""The adapter-router command line, run as a user runs it: a real process, real models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd or REPO,
        check=False,
    )


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "router"
    result = run_cli(
        "train", "--data", str(REPO / "data" / "skills"), "--out", str(out), "--fallback-domain", "general"
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    return out


def test_train_writes_artifact(artifact):
    manifest = json.loads((artifact / "router.json").read_text())

    assert manifest["format"] == "adapter-router/router"
    assert manifest["fallback_domains"] == ["general"]
    assert {"math", "code", "medical", "legal", "finance", "sql", "general"} <= set(manifest["domains"])
    assert (artifact / "exemplars.faiss").is_file()
    assert (artifact / "head.coef.npy").is_file()


def test_route_prints_decision(artifact):
    result = run_cli("route", "--artifact", str(artifact), "Solve for x: 3x + 5 = 20")

    assert result.returncode == 0, result.stderr
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert lines["domain"].strip() == "math"
    assert lines["adapter"].strip() == "math"
    assert lines["reason"].strip() == "routed"
    assert float(lines["confidence"]) > 0.5
    assert lines["top scores"].strip().startswith("math ")


def test_route_json_falls_back_for_chit_chat(artifact):
    result = run_cli("route", "--artifact", str(artifact), "--json", "hi, how are you today?")

    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["fallback"] is True
    assert decision["adapter"] is None
    assert decision["fallback_reason"] in {"fallback_domain", "low_confidence", "out_of_domain"}
    assert len(decision["nearest"]) == 3


def test_missing_data_is_one_line_error(tmp_path):
    result = run_cli("train", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r"))

    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "exemplar path not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_artifact_path_is_one_line_error(tmp_path):
    result = run_cli("route", "--artifact", str(tmp_path / "nowhere"), "hello")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"adapter-router: error: router artifact not found: {tmp_path / 'nowhere' / 'router.json'} "
        "does not exist: train one with `adapter-router train --data PATH --out DIR`"
    ]


def test_serve_with_missing_config_is_one_line_error(tmp_path):
    result = run_cli("serve", "--config", str(tmp_path / "absent.yaml"))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "config file not found" in result.stderr
    assert "--config" in result.stderr
