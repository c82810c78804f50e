"""The static-embedding cascade with the real embedding model and the bundled exemplars."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from classifier import (
    CascadeRouter,
    CascadeStage,
    DomainRouter,
    Exemplar,
    FallbackReason,
    StaticEmbedder,
    Thresholds,
    train_router,
)
from router.config import ConfigError, RouterSettings, load_config
from router.conversation import predict_conversation
from router.protocol import RouteResponse
from router.router_loader import build_domain_router
from router.routing import RoutingService
from router.routing_text import RoutingInput

ADAPTERS = {domain: domain for domain in ("math", "code", "medical", "legal", "finance", "sql")}
MATH = "Solve for x: 3x + 5 = 20"
SMALL_TALK = "hello, how are you today?"


@pytest.fixture(scope="module")
def cascade(
    router_cache: Path,
    default_router: DomainRouter,
    static_embedder: StaticEmbedder,
    static_logs: list[logging.LogRecord],
) -> CascadeRouter:
    """The cascade a gateway config with ``cascade_threshold: 0.8`` builds.

    ``default_router`` and ``static_embedder`` have cached the transformer router and the static
    table in ``router_cache`` by now, so only the static router is trained here.
    """
    settings = RouterSettings(
        exemplars=str(router_cache / "skills"),
        fallback_domains=["general"],
        confidence_threshold=0.5,
        out_of_domain_threshold=0.2,
        cache_dir=str(router_cache),
        cascade_threshold=0.8,
    )
    router = build_domain_router(settings, ADAPTERS)
    assert isinstance(router, CascadeRouter)
    return router


@pytest.fixture(scope="module")
def static_logs() -> Iterator[list[logging.LogRecord]]:
    """Log records of the static-embedding module while the module's cascade is built."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.INFO)
    logger = logging.getLogger("classifier.static_embedding")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(previous)


@pytest.fixture(scope="module")
def service(cascade: CascadeRouter) -> RoutingService:
    return RoutingService(cascade, ADAPTERS, base_model="base")


def test_config_builds_cascade(
    cascade: CascadeRouter, default_router: DomainRouter, router_cache: Path
) -> None:
    assert cascade.threshold == 0.8
    assert isinstance(cascade.static_router.embedder, StaticEmbedder)
    assert cascade.static_router.domains == default_router.domains
    assert cascade.static_router.thresholds == default_router.thresholds
    assert cascade.thresholds == default_router.thresholds
    assert cascade.embedder.name == default_router.embedder.name
    assert list((router_cache / "routers").glob("static-*/router.json"))


def test_config_reuses_cached_table(cascade: CascadeRouter, static_logs: list[logging.LogRecord]) -> None:
    messages = [record.getMessage() for record in static_logs]

    assert cascade.static_router.embedder.table_path.is_file()
    assert any(message.startswith("loading static embeddings") for message in messages), messages
    assert not any(message.startswith("distilling") for message in messages), messages


def test_default_config_has_no_cascade(default_router: DomainRouter) -> None:
    assert RouterSettings(exemplars="x").cascade_threshold is None
    assert not isinstance(default_router, CascadeRouter)


def test_invalid_cascade_threshold_names_key(tmp_path: Path) -> None:
    config = {
        "router": {"exemplars": "data:skills", "cascade_threshold": 1.5},
        "backend": {"type": "upstream", "url": "http://127.0.0.1:1/v1", "base_model_name": "base"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")

    with pytest.raises(ConfigError, match=r"invalid router.cascade_threshold = 1.5"):
        load_config(path)


def test_confident_prompt_answered_by_static_stage(cascade: CascadeRouter) -> None:
    [(prediction, stage)] = cascade.predict_staged([MATH])
    static = cascade.static_router.predict([MATH])[0]

    assert stage is CascadeStage.STATIC
    assert prediction.domain == "math"
    assert prediction.fallback_reason is None
    assert prediction.confidence == static.confidence
    assert prediction.confidence >= 0.8


def test_unconfident_prompt_falls_through(cascade: CascadeRouter, default_router: DomainRouter) -> None:
    static = cascade.static_router.predict([MATH])[0]
    above = CascadeRouter(default_router, cascade.static_router, threshold=static.confidence)
    # The smallest threshold above the static confidence: the static stage must step aside.
    below = CascadeRouter(
        default_router, cascade.static_router, threshold=min(math.nextafter(static.confidence, 2.0), 1.0)
    )

    [(_, stage_above)] = above.predict_staged([MATH])
    [(prediction, stage_below)] = below.predict_staged([MATH])
    expected = default_router.predict([MATH])[0]

    assert stage_above is CascadeStage.STATIC
    assert stage_below is CascadeStage.TRANSFORMER
    assert prediction.confidence == pytest.approx(expected.confidence, abs=1e-6)
    assert prediction.similarity == pytest.approx(expected.similarity, abs=1e-6)


def test_static_fallback_goes_to_transformer(cascade: CascadeRouter, default_router: DomainRouter) -> None:
    static = cascade.static_router.predict([SMALL_TALK])[0]
    anything_goes = CascadeRouter(default_router, cascade.static_router, threshold=0.0)

    [(prediction, stage)] = anything_goes.predict_staged([SMALL_TALK])

    assert static.fallback_reason is FallbackReason.FALLBACK_DOMAIN
    assert stage is CascadeStage.TRANSFORMER
    assert prediction.domain == default_router.predict([SMALL_TALK])[0].domain


def test_predict_keeps_order_across_stages(cascade: CascadeRouter) -> None:
    texts = [SMALL_TALK, MATH, "Write a SQL query that counts orders per customer", SMALL_TALK]

    staged = cascade.predict_staged(texts)
    predictions = cascade.predict(texts)

    assert [stage for _, stage in staged] == [
        CascadeStage.TRANSFORMER,
        CascadeStage.STATIC,
        CascadeStage.STATIC,
        CascadeStage.TRANSFORMER,
    ]
    assert [p.domain for p in predictions] == ["general", "math", "sql", "general"]
    assert cascade.predict([]) == []


def test_with_thresholds_keeps_cascade(cascade: CascadeRouter) -> None:
    stricter = cascade.with_thresholds(Thresholds(confidence=0.99, out_of_domain=0.3))

    assert isinstance(stricter, CascadeRouter)
    assert stricter.threshold == cascade.threshold
    assert stricter.thresholds.confidence == 0.99
    assert stricter.static_router.thresholds.confidence == 0.99
    assert stricter.static_router.thresholds.out_of_domain == 0.3
    assert cascade.static_router.thresholds.confidence == 0.5


def test_mismatched_domains_raise(cascade: CascadeRouter, default_router: DomainRouter) -> None:
    exemplars = [
        Exemplar("Solve 2x = 4", "math", "math"),
        Exemplar("Integrate x^2", "math", "math"),
        Exemplar("Reverse a list in Python", "code", "code"),
        Exemplar("Fix my JavaScript loop", "code", "code"),
    ]
    other = train_router(exemplars, cascade.static_router.embedder)

    with pytest.raises(ValueError, match="train both on the same exemplars"):
        CascadeRouter(default_router, other, threshold=0.8)


@pytest.mark.parametrize("threshold", [-0.1, 1.1])
def test_threshold_out_of_range_raises(
    cascade: CascadeRouter, default_router: DomainRouter, threshold
) -> None:
    with pytest.raises(ValueError, match=f"cascade threshold must be between 0 and 1, got {threshold}"):
        CascadeRouter(default_router, cascade.static_router, threshold=threshold)


def test_route_reports_static_stage(service: RoutingService) -> None:
    decision = service.route("auto", MATH)
    # What POST /v1/route returns for the decision.
    body = RouteResponse.model_validate(decision.to_dict()).model_dump(mode="json")

    assert decision.stage == "static"
    assert decision.adapter == "math"
    assert body["stage"] == "static"
    assert body["routing_text"]["basis"] == "request"
    assert body["routing_text"]["chunks"] == 1


def test_route_reports_transformer_stage(service: RoutingService, default_router: DomainRouter) -> None:
    decision = service.route("auto", SMALL_TALK)
    plain = RoutingService(default_router, ADAPTERS, base_model="base").route("auto", MATH)

    assert decision.stage == "transformer"
    assert decision.fallback_reason == FallbackReason.FALLBACK_DOMAIN
    assert plain.stage == "transformer"
    assert service.route("auto", "   ").stage is None
    assert service.route("math", MATH).stage is None


def test_conversation_request_alone_uses_static(service: RoutingService) -> None:
    decision = service.route_conversation("auto", [{"role": "user", "content": MATH}])

    assert decision.stage == "static"
    assert decision.adapter == "math"
    assert decision.text is not None
    assert decision.text.basis == "request"


def test_conversation_needs_context_threshold(cascade: CascadeRouter) -> None:
    routing_input = RoutingInput(
        MATH, request_turn=2, context=("What is a prime number?",), context_turns=(0,)
    )
    confidence = cascade.predict_static([MATH])[0].confidence

    decided, decided_report = predict_conversation(cascade, routing_input, context_threshold=confidence)
    undecided, undecided_report = predict_conversation(
        cascade, routing_input, context_threshold=math.nextafter(confidence, 2.0)
    )

    assert decided_report.stage is CascadeStage.STATIC
    assert decided_report.basis == "request"
    assert decided_report.request_turn == 2
    assert decided is not None and decided.domain == "math"
    assert undecided_report.stage is CascadeStage.TRANSFORMER
    assert undecided is not None and undecided.domain == "math"


def test_eval_routes_through_the_cascade(cascade: CascadeRouter) -> None:
    from evals.dataset import EvalRecord
    from evals.local_router import LocalRouter

    texts = [SMALL_TALK, MATH, "Write a SQL query that counts orders per customer"]
    records = [EvalRecord(text, "unused", "test", line) for line, text in enumerate(texts, start=1)]
    local = LocalRouter("cascade", cascade, cascade.embedder, latency_samples=3, batch_size=2)

    outcomes = local.route(records)

    expected = cascade.predict(texts)
    assert [outcome.confidence for outcome in outcomes] == [p.confidence for p in expected]
    assert local.latency(records)["batch_1"]["calls"] == 3


def test_eval_compare_adds_cascade(
    cascade: CascadeRouter,
    router_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from router.cli import main

    # The eval command caches under ~/.cache/adapter-router: reuse the table distilled above.
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "adapter-router").symlink_to(router_cache)
    monkeypatch.setenv("HOME", str(tmp_path))
    fixtures = Path(__file__).with_name("fixtures")
    training = ["--train-split", "train", "--label-map", str(fixtures / "eval_label_map.json")]

    status = main(
        [
            "eval",
            str(fixtures / "eval_small.jsonl"),
            "--split",
            "test",
            *training,
            "--fallback-label",
            "general",
            "--latency-samples",
            "4",
            "--compare",
            "cascade_threshold=0.8",
            "--json",
        ]
    )

    routers = json.loads(capsys.readouterr().out)["routers"]
    assert status == 0
    assert [router["name"] for router in routers] == [
        "trained on train",
        "trained on train, cascade_threshold=0.8",
    ]
    assert routers[1]["metrics"]["records"] == routers[0]["metrics"]["records"]
    assert routers[0]["router"]["cascade_threshold"] is None
    assert routers[1]["router"]["cascade_threshold"] == 0.8
