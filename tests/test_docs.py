"""The environment-variable reference in README.md and docs/ENVIRONMENT.md matches the settings."""

import pytest

from tpworker.config import envdocs


@pytest.mark.slow
def test_environment_tables_are_current():
    assert envdocs.main([]) == 0, "run: python -m tpworker.config.envdocs --write"


def test_every_worker_variable_is_in_the_readme():
    readme = (envdocs.ROOT / "README.md").read_text()
    for variables, _, _ in envdocs.worker_rows():
        for variable in variables.replace("`", "").split(" / "):
            assert f"`{variable}`" in readme
