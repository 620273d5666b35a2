"""Rasa graph components (run inside Rasa's environment; named in `config.yml`)."""

# Rasa 3.6 validates a component's annotations against its own (typing.List, Dict, Text): keep its style.
# ruff: noqa: UP006, UP019, UP035, UP037, UP045

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Text

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.classifiers.classifier import IntentClassifier
from rasa.shared.nlu.constants import ENTITIES, INTENT, INTENT_RANKING_KEY, TEXT
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

from bot.nlu.safety import emergency_span

#: The intent and entity an emergency is given; `action_out_of_scope` answers them with 112.
EMERGENCY_INTENT = "out_of_scope"
TOPIC_ENTITY = "oos_topic"
EMERGENCY_TOPIC = "emergency"

logger = logging.getLogger(__name__)


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


@DefaultV1Recipe.register([DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER], is_trainable=True)
class TfidfIntentClassifier(IntentClassifier, GraphComponent):
    """Intent classifier: TF-IDF word and character n-grams and a logistic regression (scikit-learn).

    Works on the message text itself (not on Rasa's featurizers): accents stripped and case folded
    (``strip_accents="unicode"``), sublinear term frequencies, word 1–2-grams and ``char_wb``
    1–5-grams, so typos, missing accents and SMS spelling still share most n-grams with the
    training examples; ``class_weight="balanced"`` because out_of_scope has ~4x more examples than
    an intent. The n-gram ranges and C (inverse L2 regularisation) are the best of ten candidates
    in 3-fold cross-validation on the training data (``benchmarks/tfidf_search.py``), confirmed on
    the held-out set (``benchmarks/TUNING.md``).

    When a classifier placed before it (DIET) has set an intent ranking and ``blend_weight`` is
    below 1, the two are mixed: ``p = w * p_tfidf + (1 - w) * p_before`` per intent (intents
    missing from the earlier ranking count 0). Confidences are probabilities in [0, 1]; the
    ranking keeps ``ranking_length`` intents. Persisted with skops; loading refuses any type
    outside :data:`TRUSTED_TYPES`.
    """

    #: Types the persisted model may hold beyond skops' defaults (a TF-IDF's idf matrix).
    TRUSTED_TYPES = frozenset({"scipy.sparse._csr.csr_matrix", "scipy.sparse.csr.csr_matrix"})

    @staticmethod
    def get_default_config() -> Dict[Text, Any]:
        """Return the defaults: n-gram ranges, inverse regularisation C, iterations, blend, ranking."""
        return {"word_ngram_range": [1, 2], "char_ngram_range": [1, 5], "C": 30.0, "max_iter": 2000,
                "blend_weight": 1.0, "ranking_length": 10, "random_state": 42}

    @staticmethod
    def required_packages() -> List[Text]:
        """Return the packages the component imports."""
        return ["sklearn", "skops"]

    def __init__(self, config: Dict[Text, Any], model_storage: ModelStorage, resource: Resource,
                 pipeline: Optional[Any] = None) -> None:
        """Keep the configuration, the storage place and a trained scikit-learn pipeline if any."""
        self.config = {**self.get_default_config(), **config}
        self._model_storage = model_storage
        self._resource = resource
        self.pipeline = pipeline

    @classmethod
    def create(cls, config: Dict[Text, Any], model_storage: ModelStorage, resource: Resource,
               execution_context: ExecutionContext) -> "TfidfIntentClassifier":
        """Create an untrained classifier."""
        return cls(config, model_storage, resource)

    def _new_pipeline(self) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline, make_union

        common = {"strip_accents": "unicode", "lowercase": True, "sublinear_tf": True}
        words = TfidfVectorizer(analyzer="word", ngram_range=tuple(self.config["word_ngram_range"]),
                                token_pattern=r"(?u)\b\w+\b", **common)
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(self.config["char_ngram_range"]), **common)
        classifier = LogisticRegression(C=float(self.config["C"]), max_iter=int(self.config["max_iter"]),
                                        class_weight="balanced", random_state=self.config["random_state"])
        return make_pipeline(make_union(words, chars), classifier)

    def train(self, training_data: TrainingData) -> Resource:
        """Fit on every intent example that has a text; persist; return the resource."""
        examples = [e for e in training_data.intent_examples if e.get(INTENT) and e.get(TEXT)]
        if len({e.get(INTENT) for e in examples}) < 2:
            logger.debug("TfidfIntentClassifier: fewer than two intents, not trained.")
            return self._resource
        self.pipeline = self._new_pipeline()
        self.pipeline.fit([e.get(TEXT) for e in examples], [e.get(INTENT) for e in examples])
        self.persist()
        return self._resource

    def process(self, messages: List[Message]) -> List[Message]:
        """Set `intent` and `intent_ranking` of each message with a text; return the same list."""
        if self.pipeline is None:
            return messages
        weight = float(self.config["blend_weight"])
        for message in messages:
            text = message.get(TEXT)
            if not text:
                continue
            probabilities = dict(zip(self.pipeline.classes_, self.pipeline.predict_proba([text])[0], strict=True))
            before = {r["name"]: float(r["confidence"]) for r in message.get(INTENT_RANKING_KEY) or []}
            if before and weight < 1.0:
                probabilities = {name: weight * float(p) + (1.0 - weight) * before.get(name, 0.0)
                                 for name, p in probabilities.items()}
            ranking = sorted(({"name": str(name), "confidence": float(p)} for name, p in probabilities.items()),
                             key=lambda r: -r["confidence"])
            if self.config["ranking_length"]:
                ranking = ranking[: int(self.config["ranking_length"])]
            message.set(INTENT, dict(ranking[0]), add_to_output=True)
            message.set(INTENT_RANKING_KEY, ranking, add_to_output=True)
        return messages

    def persist(self) -> None:
        """Write the fitted pipeline with skops (no pickle) into the component's resource."""
        import skops.io as sio

        with self._model_storage.write_to(self._resource) as directory:
            sio.dump(self.pipeline, directory / "tfidf_intent.skops")

    @classmethod
    def load(cls, config: Dict[Text, Any], model_storage: ModelStorage, resource: Resource,
             execution_context: ExecutionContext, **kwargs: Any) -> "TfidfIntentClassifier":
        """Load a trained classifier; untrained (no resource) when training had nothing to fit.

        Raises:
            ValueError: the stored file holds a type outside skops' defaults and TRUSTED_TYPES.
        """
        import skops.io as sio

        try:
            with model_storage.read_from(resource) as directory:
                path = directory / "tfidf_intent.skops"
                untrusted = sio.get_untrusted_types(file=path) if path.exists() else None
                unknown = sorted(set(untrusted or []) - cls.TRUSTED_TYPES)
                pipeline = sio.load(path, trusted=untrusted) if untrusted is not None and not unknown else None
        except ValueError:  # Rasa's storage: no such resource (training had nothing to fit)
            return cls(config, model_storage, resource)
        if unknown:
            raise ValueError(f"untrusted types in the stored intent classifier: {unknown}")
        return cls(config, model_storage, resource, pipeline)


@DefaultV1Recipe.register([DefaultV1Recipe.ComponentType.ENTITY_EXTRACTOR], is_trainable=False)
class EntityTidy(GraphComponent):
    """Leave one entity per type and value when two extractors found it; drop unused lookup matches.

    Placed after EntitySynonymMapper: RegexEntityExtractor (lookup tables) and CRFEntityExtractor
    often find the same `contact_channel` or `language`; Rasa would then fill a slot from a list
    of equal values (the health-word table and the CRF likewise give `oos_topic: medical`). The
    first entity of each (type, value, role, group) is kept, in pipeline
    order. Entities RegexEntityExtractor found for a lookup table not named in ``lookup_entities``
    (professions, document kinds: tables that only feed the featurizer) are removed, so that no
    entity outside the domain reaches the tracker.
    """

    @staticmethod
    def get_default_config() -> Dict[Text, Any]:
        """Return the defaults: the lookup tables whose matches are entities."""
        return {"lookup_entities": ["language", "contact_channel", "oos_topic"]}

    def __init__(self, config: Dict[Text, Any]) -> None:
        """Keep the configuration."""
        self.lookup_entities = set(config.get("lookup_entities") or [])

    @classmethod
    def create(cls, config: Dict[Text, Any], model_storage: ModelStorage, resource: Resource,
               execution_context: ExecutionContext) -> "EntityTidy":
        """Create the component."""
        return cls({**cls.get_default_config(), **config})

    def process(self, messages: List[Message]) -> List[Message]:
        """Tidy each message's entities in place; return the same list."""
        for message in messages:
            entities = message.get(ENTITIES) or []
            kept: List[Dict[Text, Any]] = []
            seen = set()
            for entity in entities:
                name = entity.get("entity")
                if entity.get("extractor") == "RegexEntityExtractor" and name not in self.lookup_entities:
                    continue
                key = (name, str(entity.get("value")).lower(), entity.get("role"), entity.get("group"))
                if key not in seen:
                    seen.add(key)
                    kept.append(entity)
            if len(kept) != len(entities):
                message.set(ENTITIES, kept, add_to_output=True)
        return messages
