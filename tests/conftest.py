"""Shared test fixtures.

The whole test session talks to a local Hub (tests/hub_server.py) instead of huggingface.co:
the environment below is set before anything imports huggingface_hub / transformers / datasets
(they read HF_ENDPOINT and friends at import time), and subprocesses inherit it. HF_HOME is a
temporary folder, so caches start empty and nothing touches the user's.

Fixtures: ``hub_server`` (session; the local Hub), ``hub_repo_id`` (a fresh repo id per test),
``olah_mirror`` (session; an offline olah mirror serving local folders). Autouse guards fail a
test that leaves offline mode on or during which the local Hub hit a bug of its own.
"""

import os
import shutil
import sys
import tempfile

import pytest

from hub_server import HubServer
from olah_mirror import OlahMirror

# Bound now, so the port is ours for the whole session; it serves from the first request on,
# so a test (or a subprocess) that forgets the fixture still never hangs or reaches the real Hub.
_HUB = HubServer().start()
_HF_HOME = tempfile.mkdtemp(prefix="hyperrep-test-hf-home-")

# Variables that would send the clients elsewhere (other caches, stored tokens) or offline.
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
for _name in (*_OFFLINE_VARS, "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE",
              "TRANSFORMERS_CACHE", "HF_XET_CACHE", "HF_ASSETS_CACHE", "HF_TOKEN_PATH",
              "HF_STORED_TOKENS_PATH", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_CO_STAGING",
              "HF_MODULES_CACHE", "HF_EVALUATE_CACHE"):
    os.environ.pop(_name, None)
os.environ.update({
    "HF_ENDPOINT": _HUB.endpoint,
    "HF_HOME": _HF_HOME,
    "HF_TOKEN": _HUB.token,
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
})

_already = sys.modules.get("huggingface_hub.constants")
if _already is not None and _already.ENDPOINT != _HUB.endpoint:
    raise RuntimeError(
        "huggingface_hub was imported before tests/conftest.py set HF_ENDPOINT "
        f"(it points at {_already.ENDPOINT}); a pytest plugin must not import it early."
    )


def pytest_sessionfinish(session, exitstatus):
    _HUB.stop()
    shutil.rmtree(_HF_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def hub_server() -> HubServer:
    """The session's local Hub: ``.endpoint``, ``.token``, ``.user``, ``.new_repo_id(name)``,
    ``.repo_files(repo_id, repo_type)``, ``.is_lfs(repo_id, path)``, ``.requests``."""
    return _HUB


@pytest.fixture
def hub_repo_id(hub_server, request) -> str:
    """A fresh, unused repo id named after the test, e.g. ``hyperrep-tester/test_x-3-1a2b3c``."""
    return hub_server.new_repo_id(request.node.name.split("[")[0][:40])


@pytest.fixture(scope="session")
def olah_mirror(tmp_path_factory):
    """An offline olah mirror (started once, on first use): ``.add_repo(repo_id, folder,
    repo_type="model")`` serves a local folder; point a client at it with ``HF_ENDPOINT=.endpoint``
    (in a subprocess: this session's HF_ENDPOINT is the local Hub)."""
    with OlahMirror(tmp_path_factory.mktemp("olah")) as mirror:
        yield mirror


# Module-level offline flags the clients read at import: (module, attribute).
_OFFLINE_FLAGS = (("huggingface_hub.constants", "HF_HUB_OFFLINE"),
                  ("datasets.config", "HF_HUB_OFFLINE"), ("datasets.config", "HF_DATASETS_OFFLINE"))


@pytest.fixture(autouse=True)
def _hub_stays_online():
    """Fail a test that leaves the session offline (later tests' downloads from the local Hub
    would break). Offline mode is never set globally; to test it in one test use
    monkeypatch.setenv / monkeypatch.setattr, which undo themselves."""
    yield
    leaked = [name for name in _OFFLINE_VARS if name in os.environ]
    for name in leaked:
        del os.environ[name]
    for module_name, attribute in _OFFLINE_FLAGS:
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, attribute, False):
            setattr(module, attribute, False)
            leaked.append(f"{module_name}.{attribute}")
    if leaked:
        pytest.fail(f"test left offline mode on ({', '.join(leaked)}); use monkeypatch instead",
                    pytrace=False)


@pytest.fixture(autouse=True)
def _hub_server_had_no_errors():
    """Fail the test during which the local Hub hit a bug of its own (it answered 500)."""
    before = len(_HUB.errors)
    yield
    if len(_HUB.errors) > before:
        pytest.fail("tests/hub_server.py failed on a request:\n" + "\n".join(_HUB.errors[before:]),
                    pytrace=False)
