"""Settings: env prefix and nesting, .env files, frozen, secrets masked, the .env.example guard."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fraudpipe.settings import DEV_TOKENIZATION_KEY, Settings, TopicSettings, env_example

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No FRAUD_ variable and no .env from the developer's shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("FRAUD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.topics.full(settings.topics.transactions) == "transactions.v1"
    assert settings.web.enabled is False
    assert settings.web.bind == "127.0.0.1"


def test_environment_variables_nest_with_double_underscore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:39092")
    monkeypatch.setenv("FRAUD_SCORING__BATCH_SIZE", "64")
    monkeypatch.setenv("FRAUD_TOPICS__PREFIX", "t1-")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:39092"
    assert settings.scoring.batch_size == 64
    assert settings.topics.full("alerts.v1") == "t1-alerts.v1"


def test_dotenv_file_is_read_and_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FRAUD_REDIS__URL=redis://127.0.0.1:7000/1\nFRAUD_SCORING__BATCH_SIZE=10\n")
    monkeypatch.setenv("FRAUD_SCORING__BATCH_SIZE", "20")
    settings = Settings()
    assert settings.redis.url == "redis://127.0.0.1:7000/1"
    assert settings.scoring.batch_size == 20


def test_a_typo_in_dotenv_is_an_error(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FRAUD_SCORING__BATCHSIZE=10\n")
    with pytest.raises(ValidationError):
        Settings()


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.environment = "prod"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.kafka.app_id = "other"  # type: ignore[misc]


def test_secrets_print_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_PRIVACY__TOKENIZATION_KEY", "s3cr3t-key-that-must-never-be-printed")
    monkeypatch.setenv("FRAUD_REDIS__PASSWORD", "redis-pass-never-printed")
    monkeypatch.setenv("FRAUD_KAFKA__SASL_PASSWORD", "kafka-pass-never-printed")
    settings = Settings()
    for text in (repr(settings), str(settings), settings.model_dump_json(), repr(settings.privacy)):
        assert "never" not in text
    assert settings.privacy.tokenization_key.get_secret_value() == "s3cr3t-key-that-must-never-be-printed"


def test_prod_refuses_the_dev_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_ENVIRONMENT", "prod")
    with pytest.raises(ValidationError, match="TOKENIZATION_KEY"):
        Settings()
    monkeypatch.setenv("FRAUD_PRIVACY__TOKENIZATION_KEY", "x" * 32)
    with pytest.raises(ValidationError, match="AUDIT_KEY"):
        Settings()
    monkeypatch.setenv("FRAUD_PRIVACY__AUDIT_KEY", "y" * 32)
    assert Settings().privacy.tokenization_key.get_secret_value() != DEV_TOKENIZATION_KEY


def test_thresholds_must_be_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_SCORING__REVIEW_THRESHOLD", "0.95")
    with pytest.raises(ValidationError, match="review_threshold"):
        Settings()


def test_kafka_client_config_and_faust_url() -> None:
    settings = Settings(kafka={"bootstrap_servers": "127.0.0.1:1, 127.0.0.1:2"})  # type: ignore[arg-type]
    assert settings.kafka.faust_broker_url() == "kafka://127.0.0.1:1;kafka://127.0.0.1:2"
    assert settings.kafka.client_config()["bootstrap.servers"] == "127.0.0.1:1, 127.0.0.1:2"
    sasl = Settings(
        kafka={"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u", "sasl_password": "p"}  # type: ignore[arg-type]
    )
    assert sasl.kafka.client_config()["sasl.password"] == "p"


def test_every_producer_is_built_idempotent_and_acknowledged_by_all_replicas() -> None:
    """One producer configuration (KafkaSettings.producer_config) for the worker, the API, the replayer and the model
    events: each component tunes batching and timeouts, none the guarantees."""
    from confluent_kafka import Producer

    from streams.replay import producer_config

    kafka = Settings(kafka={"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u", "sasl_password": "p",
                            "security_protocol": "SASL_PLAINTEXT"}).kafka  # type: ignore[arg-type]  # fmt: skip
    for config in (kafka.producer_config(), kafka.producer_config({"linger.ms": 5}), producer_config(kafka)):
        assert config["enable.idempotence"] is True and config["acks"] == "all"
        assert config["compression.type"] == "lz4" and config["sasl.username"] == "u"
        Producer({**config, "bootstrap.servers": "127.0.0.1:1"}).flush(0)  # librdkafka takes it as it is
    assert producer_config(kafka, linger_ms=3)["linger.ms"] == 3
    with pytest.raises(ValueError, match=r"acks and enable\.idempotence are not tunable"):
        kafka.producer_config({"acks": 1, "enable.idempotence": False})


def test_every_consumer_is_built_without_auto_commit() -> None:
    """One consumer configuration (KafkaSettings.consumer_config) for the scoring consumer, the model-event listeners
    and the benchmark's reader: each tunes fetching and logging, none the group or committing."""
    from confluent_kafka import Consumer

    from streams.consumer import consumer_config

    kafka = Settings(kafka={"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u", "sasl_password": "p",
                            "security_protocol": "SASL_PLAINTEXT"}).kafka  # type: ignore[arg-type]  # fmt: skip
    for config in (kafka.consumer_config("g"), consumer_config(kafka, "g")):
        assert config["enable.auto.commit"] is False and config["group.id"] == "g"
        assert config["sasl.username"] == "u"
        Consumer({**config, "bootstrap.servers": "127.0.0.1:1"}).close()  # librdkafka takes it as it is
    with pytest.raises(ValueError, match=r"enable\.auto\.commit and group\.id are not tunable"):
        kafka.consumer_config("g", {"group.id": "h", "enable.auto.commit": True})


@pytest.mark.parametrize(
    ("topic", "dlq"),
    [
        ("transactions.v1", "transactions.dlq.v1"),
        ("model-events.v12", "model-events.dlq.v12"),
        ("raw", "raw.dlq"),
    ],
)
def test_dlq_names(topic: str, dlq: str) -> None:
    assert TopicSettings.dlq_of(topic) == dlq


def test_env_example_lists_every_setting_with_its_default() -> None:
    """Guard: .env.example == the settings model. Regenerate with `fraudpipe config env-example > .env.example`."""
    assert (ROOT / ".env.example").read_text() == env_example()


def test_every_line_of_env_example_is_a_valid_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(env_example())
    assert Settings() == Settings(_env_file=None)


def test_rules_are_data_with_their_own_limits() -> None:
    from fraudpipe.settings import Rule, ScoringSettings

    rules = ScoringSettings(rules=("card_blocked", {"id": "large_amount", "threshold": 5000, "at_least": "decline"}))
    assert rules.rules == (Rule(id="card_blocked", at_least="decline"),
                           Rule(id="large_amount", at_least="decline", threshold=5000.0))  # fmt: skip
    assert ScoringSettings(rules=("known_fraud_30d",)).rules[0].threshold == 1.0  # a bare id takes the defaults
    for bad, message in (
        (("large_amount",), "large_amount needs a threshold"),
        (({"id": "card_blocked", "threshold": 2},), "card_blocked declines, with no threshold"),
        (({"id": "card_blocked", "at_least": "review"},), "card_blocked declines"),
        (("known_fraud_30d", "known_fraud_30d"), "each rule at most once"),
        (("velocity",), "Input should be"),
    ):
        with pytest.raises(ValueError, match=message):
            ScoringSettings(rules=bad)
