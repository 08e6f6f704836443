pytest_plugins = ["tests.fixtures_broker", "tests.fixtures_db"]
