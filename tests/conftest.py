import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Converted weights go to a cache of the test session, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DECONVVIZ_CACHE", str(tmp_path_factory.mktemp("deconvviz-cache")))
    yield
    mp.undo()
