"""The routing policy: each rule, its reason, the budget window, config validation."""

import pytest

from edge_runtime.errors import ConfigError
from edge_runtime.results import Prediction
from edge_runtime.router import Router, RoutingPolicy


def prediction(label="balance", score=0.9, margin=0.8, entropy=0.1, top=None, ood=None):
    return Prediction(
        label=label,
        score=score,
        top_k=[(top or label, score), ("other", 1 - score)],
        margin=margin,
        entropy=entropy,
        ood=ood,
    )


def route(policy: dict, **kwargs):
    return Router(RoutingPolicy.from_dict(policy)).route(prediction(**kwargs))


def test_confident_prediction_stays_local():
    decided = route({"min_confidence": 0.5}, score=0.9)
    assert (decided.decision, decided.reason) == ("local", "confident")


@pytest.mark.parametrize(
    "policy, kwargs, reason",
    [
        ({"min_confidence": 0.5}, {"score": 0.4}, "min_confidence<0.5"),
        ({"min_margin": 0.3}, {"margin": 0.1}, "min_margin<0.3"),
        ({"max_entropy": 0.5}, {"entropy": 0.7}, "max_entropy>0.5"),
        ({"max_ood": 0.8}, {"ood": 0.81}, "max_ood>0.8"),
        ({"always_escalate": ["balance"]}, {"score": 0.99}, "always_escalate:balance"),
        ({"min_confidence": 0.5, "per_class": {"balance": 0.95}}, {"score": 0.9}, "per_class_confidence:balance<0.95"),
    ],
)
def test_each_rule_escalates_with_its_reason(policy, kwargs, reason):
    decided = route(policy, **kwargs)
    assert (decided.decision, decided.reason) == ("escalate", reason)


def test_max_ood_escalates_a_confident_answer_far_from_every_class():
    policy = {"min_confidence": 0.5, "max_ood": 0.8}
    assert route(policy, score=0.99, ood=0.8).reason == "confident"  # at the cut stays: "above" escalates
    assert route(policy, score=0.99, ood=0.95).reason == "max_ood>0.8"
    # a far text is not a known class: a per-class confidence cut does not keep it local
    assert route({**policy, "per_class": {"balance": 0.5}}, score=0.99, ood=0.95).reason == "max_ood>0.8"
    # a bundle without the score: the rule cannot fire, the others still do
    assert route(policy, score=0.99, ood=None).reason == "confident"
    assert route(policy, score=0.3, ood=None).reason == "min_confidence<0.5"
    # labels that never leave, or never escalate, still win
    assert route({**policy, "never_escalate": ["balance"]}, ood=0.99).reason == "never_escalate:balance"
    assert route({**policy, "private_labels": ["balance"]}, ood=0.99).reason == "private_label:balance"


def test_per_class_threshold_overrides_the_global_one():
    decided = route({"min_confidence": 0.95, "per_class": {"balance": 0.5}}, score=0.9)
    assert decided.decision == "local"


def test_private_and_never_escalate_labels_win_over_low_confidence():
    assert (
        route({"min_confidence": 0.9, "private_labels": ["pin_change"]}, label="pin_change", score=0.1).reason
        == "private_label:pin_change"
    )
    assert route({"min_confidence": 0.9, "never_escalate": ["balance"]}, score=0.1).reason == "never_escalate:balance"


def test_private_label_is_checked_on_the_models_top_label_too():
    # a reject threshold may have turned the answer into `oos`; the input is still private
    decided = route({"min_confidence": 0.9, "private_labels": ["pin_change"]}, label="oos", top="pin_change", score=0.2)
    assert decided.decision == "local" and decided.reason == "private_label:pin_change"


def ranked(*top_k, margin=0.1, entropy=0.9):
    return Prediction(label=top_k[0][0], score=top_k[0][1], top_k=list(top_k), margin=margin, entropy=entropy)


@pytest.mark.parametrize(
    "second, floor, decision",
    [
        (0.08, None, "local"),  # above the default floor (0.05): plausibly private, stays
        (0.04, None, "escalate"),  # below it
        (0.08, 0.1, "escalate"),  # a bundle or config may raise the floor
        (0.08, 0.08, "local"),  # at the floor counts
    ],
)
def test_a_private_label_anywhere_in_the_top_k_above_the_floor_keeps_the_text_local(second, floor, decision):
    policy = {"min_confidence": 0.9, "private_labels": ["pin_change"]}
    if floor is not None:
        policy["private_label_floor"] = floor
    router = Router(RoutingPolicy.from_dict(policy))
    decided = router.route(ranked(("balance", 0.5), ("transfer", 0.3), ("pin_change", second)))
    assert decided.decision == decision, decided
    if decision == "local":
        assert decided.reason == "private_label:pin_change"


def test_the_private_label_floor_is_a_probability():
    with pytest.raises(ConfigError, match="private_label_floor must be between 0 and 1"):
        RoutingPolicy.from_dict({"private_label_floor": 1.5})


def test_budget_caps_the_share_of_escalations_over_the_window():
    router = Router(RoutingPolicy.from_dict({"min_confidence": 0.5, "budget": 0.25, "budget_window": 8}))
    decisions = [router.route(prediction(score=0.1)) for _ in range(8)]
    escalated = [d for d in decisions if d.decision == "escalate"]
    assert len(escalated) == 2
    flagged = [d for d in decisions if d.reason.startswith("budget_exhausted:")]
    assert len(flagged) == 6 and flagged[0].reason == "budget_exhausted:min_confidence<0.5"
    # confident answers fill the window, the old escalations slide out, the budget frees up
    for _ in range(8):
        router.route(prediction(score=0.99))
    assert router.route(prediction(score=0.1)).decision == "escalate"
    assert router.escalation_rate == pytest.approx(1 / 8)


@pytest.mark.parametrize(
    "bad",
    [{"min_confidence": 1.5}, {"budget": -0.1}, {"per_class": {"x": 2}}, {"budget_window": 0}, {"max_ood": 1.2}],
)
def test_invalid_policy_is_refused_with_the_field_named(bad):
    with pytest.raises(ConfigError, match="routing"):
        RoutingPolicy.from_dict(bad)


def test_overrides_replace_manifest_values_and_unknown_fields_are_ignored():
    policy = RoutingPolicy.from_dict({"min_confidence": 0.5, "oos_label": "oos"}, {"min_confidence": 0.7})
    assert policy.min_confidence == 0.7
