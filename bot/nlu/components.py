"""Rasa graph components (run inside Rasa's environment; named in `config.yml`)."""

# Rasa 3.6 validates a component's annotations against its own (typing.List, Dict, Text): keep its style.
# ruff: noqa: UP006, UP019, UP035, UP037

from __future__ import annotations

from typing import Any, Dict, List, Text

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.shared.nlu.constants import ENTITIES, INTENT, INTENT_RANKING_KEY, TEXT
from rasa.shared.nlu.training_data.message import Message

from bot.nlu.safety import emergency_span

#: The intent and entity an emergency is given; `action_out_of_scope` answers them with 112.
EMERGENCY_INTENT = "out_of_scope"
TOPIC_ENTITY = "oos_topic"
EMERGENCY_TOPIC = "emergency"


@DefaultV1Recipe.register([DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER], is_trainable=False)
class EmergencyGuard(GraphComponent):
    """Override the classifier when a message describes a medical emergency.

    Placed after the FallbackClassifier: when `bot.nlu.safety.emergency_span` finds an emergency
    phrase, the message's intent becomes `out_of_scope` with confidence 1.0 (also first in the
    ranking) and an `oos_topic` entity with value `emergency` is added, so the out-of-scope rules
    (inside every form as well) answer with the emergency number whatever DIET predicted.
    Payload messages ("/intent") are left alone. Nothing is trained; nothing is stored.
    """

    @classmethod
    def create(
        cls,
        config: Dict[Text, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> "EmergencyGuard":
        """Create the component (it has no configuration)."""
        return cls()

    def process(self, messages: List[Message]) -> List[Message]:
        """Mark the messages that describe an emergency; return the same list."""
        for message in messages:
            text = message.get(TEXT) or ""
            if not text or text.startswith("/"):
                continue
            span = emergency_span(text)
            if span is None:
                continue
            intent = {"name": EMERGENCY_INTENT, "confidence": 1.0}
            message.set(INTENT, intent, add_to_output=True)
            ranking = [r for r in message.get(INTENT_RANKING_KEY) or [] if r.get("name") != EMERGENCY_INTENT]
            message.set(INTENT_RANKING_KEY, [dict(intent), *ranking], add_to_output=True)
            entities = [e for e in message.get(ENTITIES) or [] if e.get("entity") != TOPIC_ENTITY]
            entities.append({"entity": TOPIC_ENTITY, "value": EMERGENCY_TOPIC, "start": span[0], "end": span[1],
                             "confidence_entity": 1.0, "extractor": "EmergencyGuard"})
            message.set(ENTITIES, entities, add_to_output=True)
        return messages
