import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Converted weights go to a cache of the test session, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DECONVVIZ_CACHE", str(tmp_path_factory.mktemp("deconvviz-cache")))
    yield
    mp.undo()


@pytest.fixture()
def cwd(tmp_path, monkeypatch):
    """A fresh working folder for a command that writes its default outputs there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
