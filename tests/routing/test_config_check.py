"""`escalations config check` on shipped config and on one broken fixture per error kind, and the
policy show / timeline commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from escalations.cli import app
from escalations.policy_files import ConfigError, load_config

from .conftest import CONFIG_DIR, FIXTURES

runner = CliRunner()


def run(config_dir: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--config", str(config_dir), *args], env={"COLUMNS": "300"})
    return result.exit_code, result.output


def marked_line(path: Path) -> int:
    lines = path.read_text().splitlines()
    return next(i for i, text in enumerate(lines, start=1) if "# ERROR" in text)


CASES = [
    ("bad-unit", "partnerships/demo.yaml", "routes[0].stages[1].timescale.unit",
     "'weeks' is not one of hours, working_days, calendar_days, same_working_day"),
    ("unknown-role", "partnerships/demo.yaml", "routes[0].stages[1].asked[1]", "unknown role 'team_leader'"),
    ("stage-no-contact", "partnerships/demo.yaml", "routes[0].stages[1].asked", "has no contact"),
    ("role-no-contact", "partnerships/demo.yaml", "roles.chair", "partnership role 'chair' has no contact"),
    ("panel-too-small", "partnerships/demo.yaml", "routes[0].stages[2].decision_maker.panel.pool",
     "panel pool too small"),
    ("bad-email", "agencies/demo.yaml", "agencies[1].contacts.line_manager.email",
     "'police.ds(at)example.org' is not a valid email address"),
    ("duplicate-mailbox", "partnerships/other.yaml", "mailboxes[0]", "already owned by partnership 'demo'"),
    ("missing-field", "partnerships/demo.yaml", "policy.version", "required field is missing"),
    ("bad-yaml", "partnerships/demo.yaml", "(yaml)", "not valid YAML"),
    ("duplicate-key", "partnerships/demo.yaml", "routes[0].stages[1].action", "appears twice"),
    ("unquoted-time", "partnerships/demo.yaml", "working_day_end", "write the time in quotes"),
    ("unknown-field", "partnerships/demo.yaml", "routes[0].stages[0].timescale.whichever_shorter", "unknown field"),
]


def test_shipped_config_passes() -> None:
    code, out = run(CONFIG_DIR, "config", "check")
    assert code == 0, out
    for pid in ("city-and-hackney", "havering", "wiltshire", "tri-borough", "sutton"):
        assert pid in out
    assert "provisional reading" in out   # Sutton's timescales are flagged for confirmation


def test_fixture_base_is_valid() -> None:
    assert list(load_config(FIXTURES / "valid").partnerships) == ["demo"]


@pytest.mark.parametrize(("fixture", "file", "field", "message"), CASES, ids=[c[0] for c in CASES])
def test_broken_fixture(fixture: str, file: str, field: str, message: str) -> None:
    root = FIXTURES / fixture
    with pytest.raises(ConfigError) as info:
        load_config(root)
    issues = info.value.issues
    assert len(issues) == 1 or fixture == "panel-too-small", issues
    issue = issues[0]
    assert issue.file == str(root / file)
    assert issue.field == field
    assert message in issue.message
    assert issue.line == marked_line(root / file)

    code, out = run(root, "config", "check")
    assert code == 1
    assert f"{file}:{issue.line}: {field}: " in out

    code, out = run(root, "config", "check", "--json")
    assert code == 1
    data = json.loads(out)
    assert data["ok"] is False and data["errors"][0]["field"] == field and data["errors"][0]["line"] == issue.line


def test_no_partnerships(tmp_path: Path) -> None:
    code, out = run(tmp_path, "config", "check")
    assert code == 1 and "no partnership YAML files found" in out


def test_policy_show_table_and_json() -> None:
    code, out = run(CONFIG_DIR, "policy", "show", "havering")
    assert code == 0, out
    assert "Havering 2.5" in out and "Resolution by HSCP Chair" in out
    code, out = run(CONFIG_DIR, "policy", "show", "sutton", "--json")
    data = json.loads(out)
    assert [r["id"] for r in data["routes"]] == ["professional-disagreement", "strategic", "cp-conference"]
    assert data["routes"][0]["stages"][0]["clause"] == "Sutton 7.1"
    assert data["secure_mail"]["required"] is True


def test_policy_show_unknown_partnership() -> None:
    code, out = run(CONFIG_DIR, "policy", "show", "narnia")
    assert code == 2 and "unknown partnership" in out


def test_timeline_json_acceptance_figures() -> None:
    code, out = run(CONFIG_DIR, "policy", "timeline", "city-and-hackney", "--opened", "2026-12-23T17:30",
                    "--child-status", "cp_plan", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["partnership"] == "city-and-hackney"
    first, second = data["stages"][0], data["stages"][1]
    assert first["stage"] == 1 and first["due"] == "2027-01-05T17:00:00+00:00"
    assert first["asked"] == ["raising.practitioner", "receiving.practitioner"]
    assert second["notified"] == ["partnership.cp_chair"] and second["clause"] == "C&H 2.3-2.4"

    code, out = run(CONFIG_DIR, "policy", "timeline", "tri-borough", "--opened", "2026-04-02T09:00:00Z", "--json")
    stages = json.loads(out)["stages"]
    assert stages[0]["opens"] == "2026-04-02T10:00:00+01:00"
    assert stages[0]["due"] == "2026-04-13T17:00:00+01:00"


def test_timeline_immediate_risk_and_needed_by() -> None:
    code, out = run(CONFIG_DIR, "policy", "timeline", "havering", "--opened", "2026-08-28T11:00",
                    "--immediate-risk", "--needed-by", "2026-09-03", "--json")
    assert code == 0, out
    stages = json.loads(out)["stages"]
    assert stages[0]["stage"] == 0 and stages[0]["asked"] == ["raising.safeguarding_lead"]
    assert stages[0]["due"] == "2026-08-28T11:00:00+01:00"           # "immediately"
    assert stages[1]["due"] == "2026-09-03T17:00:00+01:00"           # shortened from Mon 7 Sep
    assert stages[1]["shortened_by_needed_by"] is True


def test_timeline_table_and_bad_input() -> None:
    code, out = run(CONFIG_DIR, "policy", "timeline", "wiltshire", "--opened", "2026-05-21T15:00")
    assert code == 0 and "Refer via the WSCB" in out
    code, out = run(CONFIG_DIR, "policy", "timeline", "wiltshire", "--opened", "yesterday")
    assert code != 0
    code, out = run(CONFIG_DIR, "policy", "timeline", "wiltshire", "--opened", "2026-05-21T15:00",
                    "--child-status", "orphaned")
    assert code != 0


def test_anchors_and_merge_keys_warn_with_file_and_line(tmp_path: Path) -> None:
    """Shared values let one edit change several stages unseen: config check warns, never fails."""
    import shutil

    shutil.copytree(FIXTURES / "valid", tmp_path / "config")
    demo = tmp_path / "config" / "partnerships" / "demo.yaml"
    lines = demo.read_text().splitlines()
    first = lines.index("        timescale:", 0)
    second = lines.index("        timescale:", first + 1)
    lines[first] = "        timescale: &five"
    lines[second:second + 4] = ["        timescale:", "          <<: *five", '          clause: "Demo 1.4"']
    demo.write_text("\n".join(lines) + "\n")
    cfg = load_config(tmp_path / "config")
    shared = [w for w in cfg.warnings if w.field == "(yaml)"]
    assert [(w.file, w.line) for w in shared] == [(str(demo), first + 1), (str(demo), second + 2),
                                                  (str(demo), second + 2)]
    assert "anchor &five" in shared[0].message and "merge key" in shared[1].message
    assert "alias *five" in shared[2].message
    code, out = run(tmp_path / "config", "config", "check")
    assert code == 0, out
    assert f"demo.yaml:{first + 1}: (yaml): anchor &five" in out


def test_shipped_partnerships_write_every_value_out() -> None:
    assert not [w for w in load_config(CONFIG_DIR).warnings if w.field == "(yaml)"]


def test_partnership_without_resolution_fails_check(tmp_path: Path) -> None:
    """A partnership that forgets where its record of a resolution is required is an error, not a blank."""
    import shutil

    shutil.copytree(FIXTURES / "valid", tmp_path / "config")
    demo = tmp_path / "config" / "partnerships" / "demo.yaml"
    text = demo.read_text()
    start = text.index("resolution:\n")
    demo.write_text(text[:start] + text[text.index("routes:\n", start):])
    code, out = run(tmp_path / "config", "config", "check")
    assert code != 0
    assert "demo.yaml:2: resolution: required field is missing" in out   # line 1 is a comment


def test_shipped_resolution_values() -> None:
    cfg = load_config(CONFIG_DIR)
    clauses = {pid: p.resolution.record_clause for pid, p in cfg.partnerships.items()}
    assert clauses == {"city-and-hackney": "C&H 3.1", "havering": "Havering 3.1",
                       "wiltshire": "Wiltshire: Documenting discussions and decisions",
                       "tri-borough": "Tri-borough §4 Additional Notes", "sutton": "Sutton 7.6"}
    for p in cfg.partnerships.values():
        window = p.resolution.confirm_within
        assert (window.amount, window.unit) == (2, "working_days")
        assert window.interpretation is not None


def test_shipped_people_live_in_the_agencies_files() -> None:
    """Rules in partnerships/, people in agencies/: no shipped partnership file names a person."""
    for path in sorted((CONFIG_DIR / "partnerships").glob("*.yaml")):
        assert "@example." not in path.read_text(), path
    cfg = load_config(CONFIG_DIR)
    for p in cfg.partnerships.values():
        assert all(role.contacts for role in p.roles.values()), p.id  # merged in from agencies/<id>.yaml
        assert p.rules_version and p.directory_version and p.rules_version != p.directory_version


def _people_moved(tmp_path: Path) -> tuple[Path, Path]:
    """The valid fixture with its chair's contact moved to the agencies file."""
    import shutil

    shutil.copytree(FIXTURES / "valid", tmp_path / "config")
    demo = tmp_path / "config" / "partnerships" / "demo.yaml"
    agencies = tmp_path / "config" / "agencies" / "demo.yaml"
    demo.write_text(demo.read_text().replace(
        "    contacts:\n      - name: Chair\n        email: demo.chair@example.org\n", ""))
    agencies.write_text(agencies.read_text() + "roles:\n  chair:\n    contacts:\n"
                        "      - name: Chair\n        email: demo.chair@example.org\n")
    return demo, agencies


def test_role_contacts_in_the_agencies_file_change_the_directory_version_only(tmp_path: Path) -> None:
    _demo, agencies = _people_moved(tmp_path)
    before = load_config(tmp_path / "config").partnerships["demo"]
    assert [c.email for c in before.roles["chair"].contacts] == ["demo.chair@example.org"]
    assert before.policy_version == load_config(FIXTURES / "valid").partnerships["demo"].policy_version
    agencies.write_text(agencies.read_text().replace("demo.chair@", "demo.new-chair@"))
    after = load_config(tmp_path / "config").partnerships["demo"]
    assert after.rules_version == before.rules_version
    assert after.directory_version != before.directory_version
    assert after.policy_version != before.policy_version  # a new case gets the new chair


def test_people_in_both_files_or_for_an_unknown_role_are_errors(tmp_path: Path) -> None:
    _demo, agencies = _people_moved(tmp_path)
    agencies.write_text(agencies.read_text() + "  treasurer:\n    contacts:\n"
                        "      - name: T\n        email: demo.t@example.org\n"
                        "  business_unit:\n    contacts:\n      - name: B\n        email: demo.b@example.org\n")
    code, out = run(tmp_path / "config", "config", "check")
    assert code == 1, out
    assert "agencies/demo.yaml" in out and "roles.treasurer: no role 'treasurer' in demo.yaml" in out
    assert "roles.business_unit.contacts: the contacts of role 'business_unit' are also in demo.yaml" in out
