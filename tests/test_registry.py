"""Third-party backends: registered through the entry-point group, loaded lazily."""

from __future__ import annotations

import sys
import textwrap

import pytest

import unidist_api as ua
from unidist_api import registry

PLUGIN = textwrap.dedent(
    """
    from unidist_api.backends.serial import SerialBackend

    class EchoBackend(SerialBackend):
        name = "echo"
    """
)


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A real distribution on sys.path declaring a backend in ``unidist_api.backends``."""
    (tmp_path / "ua_echo_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "ua_echo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ua-echo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[unidist_api.backends]\necho = ua_echo_plugin:EchoBackend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    yield
    registry.unregister_backend("echo")
    sys.modules.pop("ua_echo_plugin", None)


def test_entry_point_backend_is_listed_and_usable(installed_plugin):
    assert "ua_echo_plugin" not in sys.modules  # listed without being imported
    assert "echo" in ua.backends()
    assert "ua_echo_plugin" not in sys.modules
    ex = ua.Executor("echo")
    try:
        assert ex.backend == "echo"
        assert list(ex.map(abs, [-1, -2])) == [1, 2]
    finally:
        ex.shutdown()


def test_registered_names_include_builtins():
    assert {"serial", "local"} <= set(ua.backends())


def test_bad_target_is_refused():
    with pytest.raises(ValueError, match="module:Class"):
        registry.register_backend("broken", "no_colon_here")
