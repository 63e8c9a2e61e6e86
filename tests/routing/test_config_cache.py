"""The validated-config cache: reused while nothing changed, ignored on any change or when not private."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from escalations.policy_files import ConfigError, load_config
from escalations.policy_files import cache as config_cache
from escalations.policy_files.cache import CACHE_NAME

from .conftest import FIXTURES


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(FIXTURES / "valid", tmp_path / "config")
    data = tmp_path / "var"
    data.mkdir(mode=0o700)
    return tmp_path / "config", data


def _loads_from_yaml(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every time the YAML files are really read."""
    from escalations.policy_files import loader

    calls: list[Path] = []
    real = loader._load_config

    def counting(config_dir: Path):  # type: ignore[no-untyped-def]
        calls.append(config_dir)
        return real(config_dir)

    monkeypatch.setattr(loader, "_load_config", counting)
    return calls


def test_second_load_comes_from_the_private_cache(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir, data = dirs
    calls = _loads_from_yaml(monkeypatch)
    first = load_config(config_dir, cache_dir=data)
    assert (data / CACHE_NAME).stat().st_mode & 0o777 == 0o600
    second = load_config(config_dir, cache_dir=data)
    assert len(calls) == 1
    assert second.partnerships == first.partnerships and second.warnings == first.warnings
    assert second.partnerships.keys() == load_config(config_dir).partnerships.keys()


def test_any_edit_added_or_removed_file_invalidates(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir, data = dirs
    calls = _loads_from_yaml(monkeypatch)
    load_config(config_dir, cache_dir=data)
    demo = config_dir / "partnerships" / "demo.yaml"
    demo.write_text(demo.read_text() + "\n# a comment\n")
    load_config(config_dir, cache_dir=data)
    assert len(calls) == 2
    extra = config_dir / "agencies" / "zz-extra.yaml"
    extra.write_text("partnership: nowhere\nagencies: []\n")
    with pytest.raises(ConfigError, match="nowhere"):
        load_config(config_dir, cache_dir=data)  # an error is reported, never a stale success
    extra.unlink()
    load_config(config_dir, cache_dir=data)
    assert len(calls) == 4


def test_code_change_invalidates(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir, data = dirs
    calls = _loads_from_yaml(monkeypatch)
    load_config(config_dir, cache_dir=data)
    monkeypatch.setattr(config_cache, "_version", lambda dist: "9.9.9")  # another release of the package
    load_config(config_dir, cache_dir=data)
    assert len(calls) == 2


def test_a_cache_others_could_write_or_a_corrupt_one_is_ignored(dirs: tuple[Path, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir, data = dirs
    calls = _loads_from_yaml(monkeypatch)
    load_config(config_dir, cache_dir=data)
    os.chmod(data / CACHE_NAME, 0o666)
    load_config(config_dir, cache_dir=data)
    assert len(calls) == 2 and (data / CACHE_NAME).stat().st_mode & 0o777 == 0o600  # rewritten private
    (data / CACHE_NAME).write_bytes(b"not a pickle")
    load_config(config_dir, cache_dir=data)
    assert len(calls) == 3
    load_config(config_dir, cache_dir=data)
    assert len(calls) == 3


def test_no_data_dir_yet_means_no_cache_and_no_directory(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "valid", tmp_path / "config")
    cfg = load_config(tmp_path / "config", cache_dir=tmp_path / "missing")
    assert cfg.partnerships and not (tmp_path / "missing").exists()


def test_is_current_reads_the_key_only_and_a_stale_file_is_never_unpickled(
        dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir, data = dirs
    assert not config_cache.is_current(data, config_cache.cache_key(config_dir))  # nothing cached yet
    load_config(config_dir, cache_dir=data)
    key = config_cache.cache_key(config_dir)
    assert config_cache.is_current(data, key)
    demo = config_dir / "partnerships" / "demo.yaml"
    demo.write_text(demo.read_text() + "\n# a comment\n")
    stale = config_cache.cache_key(config_dir)
    assert stale != key and not config_cache.is_current(data, stale)

    def no_unpickling(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a stale cache was unpickled")

    monkeypatch.setattr(config_cache.pickle, "load", no_unpickling)
    assert config_cache.read_cached(data, stale) is None
    os.chmod(data / CACHE_NAME, 0o644)
    assert not config_cache.is_current(data, key)  # not ours alone: not trusted, even for its key


def test_a_read_only_build_loads_a_cached_configuration_when_it_is_read(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from escalations.app import build_app
    from escalations.settings import Settings

    shutil.copytree(FIXTURES / "valid", tmp_path / "config")
    settings = Settings(data_dir=tmp_path / "var", config_dir=tmp_path / "config")
    build_app(settings).store.engine.dispose()  # creates the database (and the data directory)
    load_config(tmp_path / "config", cache_dir=tmp_path / "var")  # caches the configuration
    calls = _loads_from_yaml(monkeypatch)
    reader = build_app(settings, read_only=True)
    assert "config" not in reader.__dict__  # valid (cached) and not read yet
    assert reader.config.partnerships.keys() == {"demo"}
    assert calls == []  # it came from the cache
    reader.store.engine.dispose()
    (tmp_path / "config" / "partnerships" / "demo.yaml").write_text("id: demo\nname: [\n")
    with pytest.raises(ConfigError, match=r"demo\.yaml"):
        build_app(settings, read_only=True)  # changed, so not known valid: loaded, and the mistake reported
