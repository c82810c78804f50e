"""Gateway config files: defaults, path resolution and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.config import (
    ConfigError,
    EmbeddedBackendSettings,
    GatewayConfig,
    UpstreamBackendSettings,
    data_path,
    load_config,
)
from router.config_checks import check_config_files

MINIMAL = """
router:
  exemplars: exemplars.jsonl
adapters:
  math: math
backend:
  type: upstream
  url: http://127.0.0.1:8001/v1
  base_model_name: base
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_default_config_serves_demo_model():
    config = load_config()

    assert isinstance(config.backend, EmbeddedBackendSettings)
    assert Path(config.backend.model) == data_path("demo_model")
    assert Path(config.router.exemplars) == data_path("skills")
    assert config.router.fallback_domains == ["general"]
    assert set(config.adapters) == {"math", "code", "medical", "legal", "finance", "sql"}
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8000


def test_relative_paths_resolve_against_config_folder(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))

    assert config.router.exemplars == str(tmp_path / "exemplars.jsonl")
    assert isinstance(config.backend, UpstreamBackendSettings)
    assert config.backend.read_timeout == 300.0


def test_missing_config_file_names_path(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml: pass an existing YAML file"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_key_names_key_and_fix(tmp_path):
    path = write(tmp_path, MINIMAL + "server:\n  prot: 9000\n")

    with pytest.raises(ConfigError) as error:
        load_config(path)

    assert str(error.value) == f"{path}: unknown key server.prot: remove it or check its spelling"


def test_invalid_value_names_key_and_value(tmp_path):
    path = write(tmp_path, MINIMAL + "server:\n  port: 99999\n")

    with pytest.raises(ConfigError, match=r"invalid server\.port = 99999"):
        load_config(path)


def test_router_needs_one_source(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  exemplars: exemplars.jsonl", "  head: knn"))

    with pytest.raises(ConfigError, match=r"set exactly one of router\.artifact and router\.exemplars"):
        load_config(path)


def test_config_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"))


def test_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(write(tmp_path, "router: [unclosed\n"))


def write_exemplars(tmp_path: Path, domains: list[str]) -> Path:
    path = tmp_path / "exemplars.jsonl"
    lines = [json.dumps({"text": f"a {domain} request", "label": domain}) for domain in domains]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_domain_without_adapter_names_key_and_fix(tmp_path):
    write_exemplars(tmp_path, ["math", "code", "legal", "general"])
    config = GatewayConfig.model_validate(
        {
            "router": {"exemplars": str(tmp_path / "exemplars.jsonl"), "fallback_domains": ["general"]},
            "adapters": {"math": "math"},
            "backend": {"type": "upstream", "url": "http://127.0.0.1:1/v1", "base_model_name": "base"},
        }
    )

    with pytest.raises(ConfigError) as error:
        check_config_files(config)
    lines = str(error.value).splitlines()

    assert len(lines) == 2
    assert lines[0].startswith("adapters.code: missing: ")
    assert lines[1].startswith("adapters.legal: missing: ")
    assert "add 'legal: <adapter name>' under adapters" in lines[1]
    assert "router.fallback_domains" in lines[1]


def test_missing_adapter_files_name_key_and_fix(tmp_path):
    write_exemplars(tmp_path, ["math", "code", "legal", "sql"])
    (tmp_path / "model" / "adapters").mkdir(parents=True)
    (tmp_path / "model" / "adapters" / "math.onnx_adapter").write_bytes(b"")
    config = GatewayConfig.model_validate(
        {
            "router": {"exemplars": str(tmp_path / "exemplars.jsonl")},
            "adapters": {"math": "math", "code": "code", "legal": "legal", "sql": None},
            "backend": {
                "type": "embedded",
                "model": str(tmp_path / "model"),
                "adapter_files": {"code": str(tmp_path / "nowhere" / "code.onnx_adapter")},
            },
        }
    )

    with pytest.raises(ConfigError) as error:
        check_config_files(config)
    lines = str(error.value).splitlines()

    assert lines == [
        f"backend.adapter_files.code: adapter file not found: {tmp_path / 'nowhere' / 'code.onnx_adapter'}: "
        "export the adapter there or correct the path",
        f"backend.adapter_files.legal: missing, and the default adapter file "
        f"{tmp_path / 'model' / 'adapters' / 'legal.onnx_adapter'} does not exist: "
        "export the adapter there or set backend.adapter_files.legal to its .onnx_adapter file",
    ]


def test_config_files_of_default_config_pass():
    check_config_files(load_config())
