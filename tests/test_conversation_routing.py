"""Conversation-aware routing with the real embedding model and the default router."""

from __future__ import annotations

import pytest

from router.config import ConversationSettings, SessionSettings
from router.routing import RoutingService
from router.routing_text import chat_routing_input
from router.sessions import InMemorySessionStore, SessionState

ADAPTERS = {domain: domain for domain in ("math", "code", "medical", "legal", "finance", "sql")}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


@pytest.fixture(scope="module")
def service(default_router):
    return RoutingService(default_router, ADAPTERS, base_model="base")


@pytest.fixture(scope="module")
def without_context(default_router):
    return RoutingService(
        default_router, ADAPTERS, base_model="base", conversation=ConversationSettings(context_turns=0)
    )


def route(service, messages, session_id=None):
    return service.route_conversation("auto", messages, session_id=session_id)


def test_string_and_parts_route_the_same(service):
    text = "Solve for x: 3x + 5 = 20"

    as_string = route(service, [user(text)])
    as_parts = route(service, [user([{"type": "text", "text": text}, IMAGE])])

    assert as_string.model == "math"
    assert as_parts.model == as_string.model
    assert as_parts.confidence == pytest.approx(as_string.confidence, abs=1e-5)


def test_image_only_turn_uses_context(service):
    messages = [user("What is the derivative of x^3 + 2x?"), assistant("3x^2 + 2"), user([IMAGE])]

    decision = route(service, messages)

    assert decision.model == "math"
    assert decision.text.basis == "context"
    assert decision.text.request_turn is None
    assert decision.text.context_turns == (0,)


def test_image_only_without_context_no_text(service, without_context):
    messages = [user("What is the derivative of x^3 + 2x?"), assistant("3x^2 + 2"), user([IMAGE])]

    assert route(service, [user([IMAGE])]).fallback_reason == "no_text"
    assert route(without_context, messages).fallback_reason == "no_text"


def test_empty_last_turn_no_text(without_context):
    decision = route(without_context, [user("Write a SQL query joining orders and customers"), user("")])

    assert decision.fallback_reason == "no_text"


def test_tool_result_only_turn_routes_on_human_text(service):
    messages = [
        user("Is it safe to take ibuprofen together with warfarin?"),
        user([{"type": "tool_result", "tool_use_id": "t1", "content": "SELECT * FROM interactions LIMIT 5"}]),
    ]

    decision = route(service, messages)

    assert decision.model == "medical"
    assert decision.text.request_turn == 0


def test_tool_messages_are_not_the_request(service):
    messages = [
        user("Write a Python function that retries an HTTP request with exponential backoff"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "c1",
            "content": "Patient presents with fever and productive cough.",
        },
    ]

    assert route(service, messages).model == "code"


def test_system_prompt_ignored_by_default(default_router):
    system = {"role": "system", "content": "You are a careful assistant for a hospital's billing team."}

    routing_input = chat_routing_input([system, user("hello there")], context_turns=3)
    with_system = chat_routing_input([system, user("hello there")], context_turns=3, include_system=True)

    assert routing_input.context == ()
    assert with_system.context == (system["content"],)
    assert with_system.context_turns == (0,)


def test_long_prompt_is_chunked_not_cut(service):
    clauses = [
        "The lessee shall indemnify the lessor against every claim arising from the lessee's breach.",
        "Either party may terminate this agreement upon thirty days' written notice for material breach.",
        "This contract is governed by the laws of the state where the premises are located.",
        "Any dispute shall be resolved by binding arbitration before a single arbitrator.",
        "The limitation of liability in this section survives termination of the agreement.",
        "No waiver of any provision is effective unless it is in writing and signed by both parties.",
    ]
    document = " ".join(f"Section {i}. {clauses[i % len(clauses)]}" for i in range(1500))
    decision = route(service, [user(document + "\nIs the indemnity clause enforceable against the lessee?")])

    assert decision.text.chars > 100_000
    assert decision.text.total_chunks > 100
    assert decision.text.chunks == 8
    assert decision.text.truncated is True
    assert decision.model == "legal", decision


def test_follow_up_stays_with_conversation(service, without_context):
    messages = [
        user("Write a SQL query that lists customers with more than five orders last year"),
        assistant("SELECT customer_id FROM orders GROUP BY customer_id HAVING COUNT(*) > 5;"),
        user("can you make it faster?"),
    ]

    decision = route(service, messages)

    assert decision.model == "sql"
    assert decision.text.basis == "request+context"
    assert route(without_context, messages).model != "sql"


def test_topic_switch_switches(service):
    messages = [
        user("Solve for x: 3x + 5 = 20"),
        assistant("x = 5"),
        user("Write a Python function that parses a CSV file and skips malformed rows"),
    ]

    decision = route(service, messages)

    assert decision.model == "code"
    assert decision.text.basis == "request"


def test_switch_to_chit_chat_falls_back(service):
    messages = [
        user("Solve for x: 3x + 5 = 20"),
        assistant("x = 5"),
        user("thanks! now write me a haiku about the sea"),
    ]

    decision = route(service, messages)

    assert decision.fallback_reason == "fallback_domain"


def test_session_holds_adapter_within_margin(default_router):
    service = RoutingService(
        default_router, ADAPTERS, base_model="base", sessions=SessionSettings(switch_margin=0.99)
    )
    route(service, [user("Solve for x: 3x + 5 = 20")], session_id="s1")

    held = route(service, [user("Write a Python function that reverses a string")], session_id="s1")
    other = route(service, [user("Write a Python function that reverses a string")], session_id="s2")

    assert held.model == "math"
    assert held.sticky is True
    assert other.model == "code"
    assert other.sticky is False


def test_session_releases_on_confident_switch(default_router):
    service = RoutingService(
        default_router, ADAPTERS, base_model="base", sessions=SessionSettings(switch_margin=0.2)
    )
    route(service, [user("Solve for x: 3x + 5 = 20")], session_id="s1")

    switched = route(service, [user("Write a Python function that reverses a string")], session_id="s1")

    assert switched.model == "code"
    assert switched.sticky is False
    assert service.session_store.get("s1") == SessionState("code", "code", "code")


def test_session_keeps_adapter_for_uncertain_turn(default_router):
    store = InMemorySessionStore()
    service = RoutingService(default_router, ADAPTERS, base_model="base", session_store=store)
    route(service, [user("What are the side effects of metformin?")], session_id="s1")

    decision = route(service, [user([IMAGE])], session_id="s1")

    assert decision.model == "medical"
    assert decision.sticky is True
    assert decision.fallback_reason is None


def test_session_store_expires_entries():
    now = [0.0]
    store = InMemorySessionStore(max_sessions=10, ttl_seconds=60, clock=lambda: now[0])
    store.put("a", SessionState("math", "math", "math"))

    now[0] = 59.0
    assert store.get("a") == SessionState("math", "math", "math")
    now[0] = 60.0
    assert store.get("a") is None
    assert len(store) == 0


def test_session_store_stays_bounded():
    store = InMemorySessionStore(max_sessions=100, ttl_seconds=3600)

    for i in range(10_000):
        store.put(f"session-{i}", SessionState("code", "code", "code"))

    assert len(store) == 100
    assert store.get("session-0") is None
    assert store.get("session-9999") is not None


def test_session_store_rejects_bad_bounds():
    with pytest.raises(ValueError, match="max_sessions must be at least 1, got 0"):
        InMemorySessionStore(max_sessions=0)
    with pytest.raises(ValueError, match="ttl_seconds must be positive"):
        InMemorySessionStore(ttl_seconds=0)
