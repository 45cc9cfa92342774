"""kubemagic.config: the admin's defaults and limits from Jupyter's config path."""

from __future__ import annotations

import pytest

from kubemagic import config
from kubemagic.errors import UsageError


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Two config directories: a user's (first, highest priority) and the system's."""
    user, system = tmp_path / "user", tmp_path / "system"
    user.mkdir()
    system.mkdir()
    monkeypatch.setattr("jupyter_core.paths.jupyter_config_path",
                        lambda: [str(user), str(system)])
    config.settings.cache_clear()
    yield user, system
    config.settings.cache_clear()


def test_no_file_means_no_limit_and_two_engines(dirs):
    s = config.settings()
    assert s.defaults.default_engines == 2 and s.defaults.max_engines == 0
    s.check_engines(10_000)
    assert s.kubernetes_defaults() == {}


def test_admin_limit_names_the_file_and_the_setting(dirs):
    _, system = dirs
    (system / "kubemagic_config.py").write_text(
        "c.Kubemagic.max_engines = 8\nc.Kubemagic.cpu = '250m'\nc.Kubemagic.memory = '512Mi'\n")
    s = config.settings()
    s.check_engines(8)
    with pytest.raises(UsageError) as e:
        s.check_engines(9)
    text = str(e.value)
    assert "9 engines" in text and "at most 8" in text
    assert "c.Kubemagic.max_engines" in text and str(system / "kubemagic_config.py") in text
    assert s.kubernetes_defaults() == {"cpu": "250m", "memory": "512Mi"}


def test_user_file_overrides_defaults_but_cannot_raise_the_limit(dirs):
    user, system = dirs
    (system / "kubemagic_config.json").write_text(
        '{"Kubemagic": {"max_engines": 4, "default_engines": 3, "cpu": "1"}}')
    (user / "kubemagic_config.py").write_text(
        "c.Kubemagic.max_engines = 64\nc.Kubemagic.default_engines = 1\n")
    s = config.settings()
    assert s.defaults.default_engines == 1 and s.defaults.cpu == "1"
    assert s.defaults.max_engines == 4 and s.limit_source.endswith("kubemagic_config.json")
    (user / "kubemagic_config.py").write_text("c.Kubemagic.max_engines = 2\n")
    config.settings.cache_clear()
    assert config.settings().defaults.max_engines == 2  # lowering is fine


def test_broken_file_is_one_clear_error(dirs):
    _, system = dirs
    (system / "kubemagic_config.py").write_text("c.Kubemagic.max_engines = \n")
    with pytest.raises(UsageError, match="could not be read"):
        config.settings()
