"""YAML with file:line marks: reading one config file, and naming the line of a field in it.

A :class:`Source` keeps the composed node tree beside the data, so every :class:`ConfigIssue`
can say ``file:line: field: message``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: libyaml's C parser when PyYAML was built with it (its nodes and errors carry the same line marks),
#: else the pure-Python one: the C parser composes a policy file about ten times faster.
SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))



Loc = tuple[str | int, ...]


def format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def line_for(root: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of ``loc`` in the composed YAML document.

    A path found in full gives the line of its key (``chair:``, ``pool:``) or sequence item; a path
    found only in part (a missing field) gives the line where the deepest mapping found begins.
    """
    if root is None:
        return None
    cur: yaml.Node = root
    line = int(cur.start_mark.line) + 1
    complete = True
    for part in loc:
        if isinstance(cur, yaml.MappingNode):
            pair = next(((k, v) for k, v in cur.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)),
                        None)
            if pair is None:
                complete = False
                continue  # a pydantic-internal loc element, or a missing key: stay on the mapping
            cur = pair[1]
            line = int(pair[0].start_mark.line) + 1
        elif isinstance(cur, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(cur.value):
            cur = cur.value[part]
            line = int(cur.start_mark.line) + 1
        else:
            complete = False
    return line if complete else int(cur.start_mark.line) + 1


@dataclass
class Source:
    path: Path
    root: yaml.Node | None
    data: Any
    text: str = ""

    def issue(self, loc: Loc, message: str) -> ConfigIssue:
        return ConfigIssue(str(self.path), line_for(self.root, loc), format_loc(loc), message)


def read_yaml(path: Path, issues: list[ConfigIssue]) -> Source | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        issues.append(ConfigIssue(str(path), None, "(file)", f"cannot read: {exc}"))
        return None
    loader = SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            issues.append(ConfigIssue(str(path), None, "(file)", "the file is empty"))
            return None
        _duplicate_keys(path, root, (), issues)
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        issues.append(ConfigIssue(str(path), mark.line + 1 if mark else None, "(yaml)",
                                  f"not valid YAML: {problem}"))
        return None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        issues.append(ConfigIssue(str(path), 1, "(top level)", "expected a mapping of field: value"))
        return None
    return Source(path, root, data, text)


def _duplicate_keys(path: Path, node: yaml.Node, loc: Loc, issues: list[ConfigIssue]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = str(k.value) if isinstance(k, yaml.ScalarNode) else "?"
            if key in seen and key != "<<":
                issues.append(ConfigIssue(str(path), k.start_mark.line + 1, format_loc((*loc, key)),
                                          f"{key!r} appears twice in the same mapping; the first would be ignored"))
            seen.add(key)
            _duplicate_keys(path, v, (*loc, key), issues)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(path, item, (*loc, i), issues)




def shared_values(src: Source) -> list[ConfigIssue]:
    """Warnings for each anchor (``&name``), alias (``*name``) and merge key (``<<:``) in ``src``.

    They make one edit change several stages at once, unseen where the value is used; a policy's
    timescales are per stage, so each stage should say its own in full.
    """
    out = []
    for event in yaml.parse(src.text, Loader=SafeLoader):
        line = event.start_mark.line + 1 if event.start_mark else None
        if isinstance(event, yaml.AliasEvent):
            what = f"alias *{event.anchor} repeats a value written elsewhere"
        elif isinstance(event, yaml.NodeEvent) and event.anchor:
            what = f"anchor &{event.anchor} shares this value with every *{event.anchor}"
        elif isinstance(event, yaml.ScalarEvent) and event.value == "<<" and not event.style:  # plain: None, or "" from libyaml
            what = "merge key <<: copies a value written elsewhere"
        else:
            continue
        out.append(ConfigIssue(str(src.path), line, "(yaml)",
                               f"{what}; write the value out in full, so that editing one stage "
                               "cannot silently change another"))
    return out
