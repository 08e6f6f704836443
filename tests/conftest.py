pytest_plugins = ["tests.fixtures_broker", "tests.fixtures_db", "tests.fixtures_api"]
