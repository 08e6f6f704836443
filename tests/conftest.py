import pytest

# Checks shared by several test modules: pytest rewrites their asserts as it does the tests' own,
# so that a failure shows the values compared.
pytest.register_assert_rewrite("tests.api_client", "tests.stored_rows")

pytest_plugins = ["tests.fixtures_broker", "tests.fixtures_db", "tests.fixtures_api"]
