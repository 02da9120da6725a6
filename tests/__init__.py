"""segbatch tests: one package, so test helpers import as `tests.helpers.*` (pyproject: pytest pythonpath = ["."])."""
