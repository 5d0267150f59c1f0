"""The suite's shared fixtures, as plugins: tests/unit, tests/integration and tests/e2e all see them."""

pytest_plugins = [
    "plugins.corpus",
    "plugins.kafka_broker",
    "plugins.postgres",
    "plugins.database",
    "plugins.milvus_server",
]
