# The real-infrastructure fixtures (Kafka broker, FerretDB) for every test in the repo.
pytest_plugins = ["shared.testing.fixtures"]
