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
