"""Prometheus metrics of the stream worker and the API (prometheus-client), served on ``settings.metrics``.

Names carry the ``fraudpipe_`` prefix; no label ever holds a card token, a transaction id or an amount.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

__all__ = [
    "BATCH_SIZE",
    "DEAD_LETTERS",
    "DECISIONS",
    "DEGRADED",
    "DRIFT_BREACHES",
    "DRIFT_PSI",
    "END_TO_END",
    "ERASED",
    "EVENTS_IN",
    "LABELS_APPLIED",
    "LIVE_QUALITY",
    "MODELS_REFUSED",
    "MODEL_INFO",
    "MODEL_SECONDS",
    "MODEL_SWAPS",
    "PUBLISHED",
    "REDELIVERED",
    "REPAIRS_APPLIED",
    "REPAIRS_SENT",
    "SHADOW_FAILURES",
    "SHADOW_SCORED",
    "SINK_DEAD",
    "SINK_FAILURES",
    "STORE_SECONDS",
]

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EVENTS_IN = Counter("fraudpipe_events_in", "Records consumed", ["topic"])
PUBLISHED = Counter("fraudpipe_events_out", "Records published", ["topic"])
DECISIONS = Counter("fraudpipe_decisions", "Decisions by outcome", ["outcome"])
DEAD_LETTERS = Counter("fraudpipe_dead_letters", "Records dead-lettered, by reason", ["topic", "reason"])
DEGRADED = Counter("fraudpipe_degraded_decisions", "Decisions taken without features (fallback policy)")
ERASED = Counter("fraudpipe_erased_events", "Events of erased cards dropped (dated up to their erasure)", ["topic"])
REDELIVERED = Counter("fraudpipe_redelivered", "Transactions seen again, answered with their remembered decision")
END_TO_END = Histogram(
    "fraudpipe_end_to_end_seconds", "Event produced (Kafka timestamp) to decision published", buckets=_LATENCY
)
BATCH_SIZE = Histogram("fraudpipe_batch_size", "Transactions per micro-batch", buckets=(1, 10, 50, 100, 250, 500, 1000))
STORE_SECONDS = Histogram("fraudpipe_store_seconds", "Feature-store call per micro-batch", buckets=_LATENCY)
MODEL_SECONDS = Histogram("fraudpipe_model_seconds", "Scores and decisions per micro-batch", buckets=_LATENCY)
MODEL_INFO = Info("fraudpipe_model", "The model in force")
MODELS_REFUSED = Counter(
    "fraudpipe_models_refused", "Model versions refused at load (integrity or parse failure), by error", ["error"]
)
MODEL_SWAPS = Counter("fraudpipe_model_swaps", "Model versions swapped in without restart")
SINK_FAILURES = Counter("fraudpipe_sink_failures", "Alert batches a sink failed or overran (retried)", ["sink"])
SINK_DEAD = Counter("fraudpipe_sink_dead_letters", "Alerts a sink gave up on (to alerts.dlq.v1)", ["sink"])
LABELS_APPLIED = Counter("fraudpipe_labels_applied", "Labels applied to the online store (new transaction versions)")
REPAIRS_SENT = Counter("fraudpipe_repairs_sent", "Transactions decided without the store, sent to feature-repairs")
REPAIRS_APPLIED = Counter("fraudpipe_repairs_applied", "Repairs applied to the feature store (redeliveries included)")
LIVE_QUALITY = Gauge(
    "fraudpipe_live_quality",
    "Quality and money of the latest matured day per model version (fraudpipe monitor): precision, model_precision, "
    "recall, ap, cp_at_k, alert_rate, label_coverage, amount_recall, expected_cost, saving_vs_rules_only, reviews, "
    "review_capacity, fraud_amount_caught, fraud_amount_missed, false_declines, false_decline_amount",
    ["model_version", "metric"],
)
DRIFT_PSI = Gauge("fraudpipe_drift_psi", "PSI of a served feature or the score over the drift window, for the columns "
                  "judged (not the calendar features, nothing when the window is too small: models.drift)",
                  ["model_version", "column"])  # fmt: skip
DRIFT_BREACHES = Gauge("fraudpipe_drift_breaches", "Judged columns past the PSI breach bound over the drift window",
                       ["model_version"])  # fmt: skip
SEGMENT_FPR_RATIO = Gauge("fraudpipe_segment_fpr_ratio", "False-positive-rate ratio of a customer segment's matured "
                          "decisions to its column's reference segment (fraudpipe monitor, governance.segments_path)",
                          ["column", "segment"])  # fmt: skip
FAIRNESS_BREACHES = Gauge(
    "fraudpipe_fairness_breaches",
    "Segments of a column whose false-positive-rate ratio of matured decisions is outside the disparity bound, among "
    "those large enough to judge (models.fairness); no sample: fairness not watched",
    ["column"],
)
SHADOW_SCORED = Counter("fraudpipe_shadow_scored", "Transactions the challenger scored in shadow")
SHADOW_FAILURES = Counter("fraudpipe_shadow_failures", "Shadow batches that failed (ignored: decisions unaffected)")
