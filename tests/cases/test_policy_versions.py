"""A case refers to the policy version it was opened under: stored once per fingerprint, kept by a
running case when the YAML changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlmodel import col, func, select

from escalations.app import build_app
from escalations.cases.models import Case, PolicyVersion
from escalations.clock import FakeClock
from escalations.policy_files.loader import load_config
from escalations.routing.policy.model import Partnership
from tests.conftest import CONFIG_DIR, AppFactory
from tests.workflow.conftest import referral
from tests.workflow.profiles import CH

pytestmark = pytest.mark.servers


def edited_config(tmp_path: Path) -> Path:
    """The shipped config with City & Hackney's first timescale shortened: a new policy version."""
    shutil.copytree(CONFIG_DIR, tmp_path / "edited")
    path = tmp_path / "edited" / "partnerships" / "city-and-hackney.yaml"
    text = path.read_text()
    assert "          amount: 5\n" in text
    path.write_text(text.replace("          amount: 5\n", "          amount: 3\n", 1))
    return tmp_path / "edited"


def test_cases_share_one_stored_version_and_keep_it(make_app: AppFactory, database_url: str, tmp_path: Path,
                                                    clock: FakeClock) -> None:
    profile = CH
    app = make_app(database_url)
    for _ in range(3):
        app.ingest(referral(profile))
    app.process_pending()
    shipped = app.config.partnerships["city-and-hackney"]
    with app.store.reading() as r:
        versions = list(r.exec(select(PolicyVersion)).all())
        cases = list(r.exec(select(Case).order_by(col(Case.id))).all())
    assert len(cases) == 3 and len(versions) == 1
    (version,) = versions
    assert version.fingerprint == shipped.policy_version and version.partnership == "city-and-hackney"
    assert {c.policy_version_id for c in cases} == {version.id}
    assert Partnership.model_validate(version.policy) == shipped

    # The YAML changes: a new referral gets a new version, the running cases keep theirs.
    edited_dir = edited_config(tmp_path)
    edited = load_config(edited_dir)
    assert edited.partnerships["city-and-hackney"].policy_version != shipped.policy_version
    later = build_app(app.settings.model_copy(update={"config_dir": edited_dir}), clock=clock)
    later.ingest(referral(profile))
    later.process_pending()
    with later.store.reading() as r:
        assert r.exec(select(func.count()).select_from(PolicyVersion)).one() == 2
        newest = r.exec(select(Case).order_by(col(Case.id).desc())).first()
        assert newest is not None and newest.policy_version_id != version.id
        for case in cases:
            assert later.workflow.policy_of(r, case) == shipped
        assert later.workflow.policy_of(r, newest) == edited.partnerships["city-and-hackney"]
    later.close()
    later.store.engine.dispose()
