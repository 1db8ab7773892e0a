"""big_distill's tests; shared helpers in `tests.helpers`, fixtures in `conftest.py`."""
