"""Look-alike sender domains: a reply from ``examp1e.org`` or ``example.org.mail.net`` where the
partnership's people write from ``example.org`` is how an impersonation usually looks.

Pure: compares a domain with the domains the partnership's configuration knows; the coordinator's
digest names the domain it resembles, so the reader can tell a typo from an attempt to interfere.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["resembles"]

#: Characters and pairs that read alike in a mail client's font.
_CONFUSABLE = (("rn", "m"), ("vv", "w"), ("0", "o"), ("1", "l"), ("i", "l"), ("5", "s"), ("_", "-"))


def _skeleton(domain: str) -> str:
    s = domain.lower()
    for a, b in _CONFUSABLE:
        s = s.replace(a, b)
    return s


def _one_edit_apart(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ by one insertion, deletion, substitution or swap of neighbours."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def _suffixes(domain: str) -> list[str]:
    """``a.b.example.org`` -> ``a.b.example.org``, ``b.example.org``, ``example.org`` (two labels or more)."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(max(1, len(labels) - 1))]


def _imitates(candidate: str, k: str) -> bool:
    return _skeleton(candidate) == _skeleton(k) or (len(k) >= 6 and _one_edit_apart(candidate, k))


def resembles(address: str, known: Iterable[str]) -> str | None:
    """The known domain that ``address``'s domain imitates without being it (or being below it), or None."""
    domain = address.rpartition("@")[2].strip().lower().rstrip(".")
    if not domain:
        return None
    known_set = {k.lower() for k in known if k}
    suffixes = _suffixes(domain)
    if any(s in known_set for s in suffixes):
        return None  # the domain, or one it is below, is a known one
    for k in sorted(known_set):
        if domain.startswith(k + ".") or any(_imitates(s, k) for s in suffixes):
            return k
    return None
