"""Every clause cited in the partnerships' YAML and in the mails exists in the policy's seed text
(/work/shared/policies, or tests' copy named by ESCALATIONS_POLICY_TEXTS): a citation of a clause
the policy does not have fails.

What is checked per policy: numbered clauses (C&H, Havering: "2.12"; Sutton: "7.4", "5(2)") are a
numbered line of the text; sections (Tri-borough "§2 Process", Sutton "7") a numbered heading;
Wiltshire's headings ("Stage Three", "Documenting discussions and decisions") a heading of its text;
"Appendix A/B" an appendix the text has. Paragraph marks (¶n) are counted by hand in the YAML's
notes and not re-derived here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from escalations.mailer.outbox import Renderer
from escalations.policy_files import load_config
from escalations.routing.policy.model import PolicyConfig
from escalations.routing.workflow.events import Opened, TimerFired
from tests.conftest import CONFIG_DIR
from tests.workflow.profiles import OPENED, PROFILES, Profile, at
from tests.workflow.test_transition import Run, new_case

POLICY_DIR = Path(os.environ.get("ESCALATIONS_POLICY_TEXTS", "/work/shared/policies"))
SOURCES = {"C&H": "city-and-hackney-2021.txt", "Havering": "havering-2020.txt", "Sutton": "sutton-lscp.txt",
           "Tri-borough": "tri-borough-2014.txt", "Wiltshire": "wiltshire-2018.txt"}
#: "C&H 2.6", "Tri-borough §2 Process ¶3", "Sutton Appendix B", "Wiltshire: Stage Three" (Wiltshire's
#: citations always carry the colon, which tells them from agency names such as "Wiltshire Police").
CITATION = re.compile(r"\b(?:(C&H|Havering|Sutton|Tri-borough) (?=[0-9§]|Appendix )|(Wiltshire): )")

pytestmark = pytest.mark.skipif(not all((POLICY_DIR / f).is_file() for f in SOURCES.values()),
                                reason=f"the policies' seed texts are not in {POLICY_DIR}")


def _text(who: str) -> str:
    return (POLICY_DIR / SOURCES[who]).read_text(encoding="utf-8")


def citations(text: str) -> Iterator[tuple[str, str]]:
    """(policy, clause text) for each citation in ``text``: from the policy's name to the closing
    bracket, quote or end of line (brackets inside a citation are kept: "7 ¶2 (flowchart, Appendix A)")."""
    for m in CITATION.finditer(text):
        depth, end = 0, m.end()
        while end < len(text) and text[end] not in '\n"':
            ch = text[end]
            if ch == "(":
                depth += 1
            elif ch == ")":
                if depth == 0:
                    break
                depth -= 1
            end += 1
        yield m.group(1) or m.group(2), text[m.end():end].strip().rstrip(".,:")


def _numbered(text: str, number: str) -> bool:
    return re.search(rf"(?m)^\s*(?:- )?{re.escape(number)}\.?\s", text) is not None


def _appendix(text: str, letter: str) -> bool:
    return re.search(rf"(?i)\bappendix {letter}\b", text) is not None


def _wiltshire(text: str, part: str) -> bool:
    heading = re.sub(r"\s*(¶\d+(-¶?\d+)?|\(NB\))", "", part).strip()
    flat = " ".join(text.split()).lower()
    return bool(heading) and heading.lower() in flat and ("(NB)" not in part or "NB/" in text)


def _tri_borough(text: str, part: str) -> bool:
    m = re.match(r"§(\d+)\s*([A-Za-z ]*?)\s*(¶.*)?$", part)
    if m:
        title = m.group(2).strip()
        return re.search(rf"(?m)^\s*{m.group(1)}\.\s+{re.escape(title)}", text) is not None
    m = re.match(r"Appendix ([A-Z])\b", part)
    return bool(m) and _appendix(text, m.group(1))


def _numbered_policy(text: str, part: str) -> bool:
    ok = True
    for appendix in re.findall(r"Appendix ([A-Z])\b", part):
        ok &= _appendix(text, appendix)
    head = re.sub(r"\(flowchart, Appendix [A-Z]\)|Appendix [A-Z]\b.*", "", part).strip()
    if not head:
        return ok
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?(?:\((\d+)\))?(?:\s*¶\d+(?:-¶?\d+)?(?:, ¶\d+)*)?", head)
    if m is None:
        return False
    for number in (m.group(1), m.group(2)):
        if number:
            ok &= _numbered(text, number)
    if m.group(3):  # "5(2)": section 5's numbered item 2
        section = re.split(rf"(?m)^\s*{int(m.group(1)) + 1}\.\s", text.split(f"{m.group(1)}. ", 1)[-1])[0]
        ok &= _numbered(section, m.group(3))
    return ok


def clause_exists(who: str, clause: str) -> bool:
    """Does every part of ``clause`` (split at ";" and ",") exist in ``who``'s policy text?"""
    text = _text(who)
    parts = [p.strip() for p in re.split(r";|,(?![^()]*\))", clause) if p.strip()]
    for part in parts:
        if who == "Wiltshire":
            found = _wiltshire(text, part)
        elif who == "Tri-borough":
            found = _tri_borough(text, part) or (part.startswith("¶") and True)
        else:
            found = _numbered_policy(text, part)
        if not found:
            return False
    return True


# ---- the checker itself ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "clause"), [
    ("Havering", "3.1"), ("Havering", "2.9-2.13"), ("C&H", "2.7-2.8, 2.10"), ("Sutton", "7.3 ¶1; 7.4; 7.6"),
    ("Sutton", "5(2); Appendix B"), ("Sutton", "7 ¶2 (flowchart, Appendix A)"), ("Tri-borough", "§2 Process ¶6"),
    ("Tri-borough", "§4 Additional Notes"), ("Tri-borough", "Appendix A"), ("Wiltshire", "Stage Three"),
    ("Wiltshire", "Documenting discussions and decisions (NB)"), ("Wiltshire", "Timescales ¶1"),
])
def test_existing_clauses_are_found(who: str, clause: str) -> None:
    assert clause_exists(who, clause)


@pytest.mark.parametrize(("who", "clause"), [
    ("Havering", "3.2"), ("Havering", "2.14"), ("C&H", "2.16"), ("C&H", "2.7-2.19"), ("Sutton", "7.7"),
    ("Sutton", "5(9)"), ("Tri-borough", "§5 Monitoring"), ("Tri-borough", "Appendix C"),
    ("Wiltshire", "Stage Four"), ("Wiltshire", "Record keeping"), ("Sutton", "Appendix D"),
])
def test_clauses_the_policy_does_not_have_fail(who: str, clause: str) -> None:
    assert not clause_exists(who, clause)


# ---- the YAML and the mails ---------------------------------------------------------------------------


def _clause_values(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("clause", "record_clause") and isinstance(v, str):
                yield v
            else:
                yield from _clause_values(v)
    elif isinstance(node, list):
        for v in node:
            yield from _clause_values(v)


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "partnerships").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_clause_in_the_partnership_yaml_exists(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    values = list(_clause_values(data))
    assert values
    bad = [(who, c) for v in values for who, c in citations(v) if not clause_exists(who, c)]
    assert not bad, bad
    # Every clause field is a citation this test can read.
    assert all(list(citations(v)) for v in values), [v for v in values if not list(citations(v))]


@pytest.fixture(scope="module")
def config() -> PolicyConfig:
    return load_config(CONFIG_DIR)


def _mails_of_a_case(config: PolicyConfig, prof: Profile) -> list[str]:
    """The mails a case sends as it climbs every stage, with a child on a CP plan, then an
    immediate-risk case and a final-stage decision."""
    p = config.partnerships[prof.id]
    renderer = Renderer()
    texts: list[str] = []
    climb = Run(p, new_case(prof, child_status="cp_plan"))
    climb(Opened(), OPENED)
    for day in range(4, 31):
        if climb.state.stage_index is not None and climb.state.stage_index >= len(prof.ladder) - 1:
            break
        climb(TimerFired("escalate", climb.state.stage_index), at(day))
    urgent = Run(p, new_case(prof, immediate_risk=True))
    urgent(Opened(), OPENED)
    final = Run(p, new_case(prof, stage=len(prof.ladder)))
    final(Opened(), OPENED)
    final.reply(prof.raiser, "RESOLVED", "agreed", authority="raiser", side="raising")
    final.reply(prof.decision_maker, "ACCEPT", "", authority="decision_maker", side="partnership")
    for run in (climb, urgent, final):
        texts += [renderer.render(m.template, m.context) for m in run.mails]
    return texts


@pytest.mark.parametrize("prof", PROFILES, ids=[p.id for p in PROFILES])
def test_every_clause_cited_in_the_mails_exists(config: PolicyConfig, prof: Profile) -> None:
    texts = _mails_of_a_case(config, prof)
    cited = {(who, c) for t in texts for who, c in citations(t)}
    assert cited, "the mails cite the policy"
    assert {who for who, _ in cited} == {next(k for k, v in SOURCES.items() if v.startswith(prof.id[:5]))}
    bad = sorted((who, c) for who, c in cited if not clause_exists(who, c))
    assert not bad, bad
