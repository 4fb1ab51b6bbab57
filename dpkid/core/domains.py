"""Domain names as they are recorded on the ledger.

The ledger stores exactly one spelling of every name (the canonical form), so
that equality of names is plain string equality across all nodes.  Clients are
expected to call :func:`normalize_domain` on user input; the deterministic
core only ever calls :func:`validate_domain`, which accepts nothing but the
canonical form.

Checking an ``xn--`` label consults the Unicode tables of the installed
``idna`` package, so every node must run the same (pinned) ``idna`` version or
nodes could disagree about which internationalised names are valid.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import idna

__all__ = [
    "MAX_DOMAIN_LEN",
    "MAX_LABEL_LEN",
    "DomainError",
    "base_domain",
    "domain_matches",
    "is_wildcard",
    "normalize_domain",
    "validate_domain",
    "validate_domain_list",
]

MAX_DOMAIN_LEN = 253
MAX_LABEL_LEN = 63

WILDCARD_LABEL = "*"
_ACE_PREFIX = "xn--"
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
# The wildcard is checked per label; admitting it here lets the per-label
# check give the more precise "wildcard_position" reason.
_NAME_CHARS = _LDH | {".", WILDCARD_LABEL}
_UPPERCASE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# UTS 46 treats these as label separators too; users of CJK input methods
# type them in place of "." and would otherwise get one mangled label.
_ALT_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
# Rejected names can be arbitrarily long; keep error messages bounded.
_MAX_SHOWN = 80


class DomainError(ValueError):
    """A domain name is not acceptable; ``reason`` is a stable slug."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _shown(text: str) -> str:
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "..."
    return repr(text)


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _check_ace_label(label: str, name: str) -> None:
    # Only a round trip proves the label is the one encoding IDNA 2008 would
    # produce: punycode alone accepts labels that decode to ASCII, to
    # disallowed code points, or to strings with several encodings.
    try:
        u_label = idna.decode(label)
        again = idna.encode(u_label).decode("ascii")
    except (UnicodeError, ValueError) as exc:
        raise DomainError(
            "bad_idna", f"label {_shown(label)} of {_shown(name)} is not a valid IDNA A-label"
        ) from exc
    if again != label:
        raise DomainError(
            "bad_idna",
            f"label {_shown(label)} of {_shown(name)} is not in canonical IDNA form"
            f" (expected {_shown(again)})",
        )


def _check_label(label: str, index: int, name: str) -> None:
    if not label:
        raise DomainError("not_a_label", f"empty label in {_shown(name)}")
    if len(label) > MAX_LABEL_LEN:
        raise DomainError(
            "label_too_long",
            f"label {_shown(label)} of {_shown(name)} exceeds {MAX_LABEL_LEN} octets",
        )
    if WILDCARD_LABEL in label:
        if index != 0 or label != WILDCARD_LABEL:
            raise DomainError(
                "wildcard_position",
                f"{_shown(name)}: a wildcard may only be the entire left-most label",
            )
        return
    if label[0] == "-" or label[-1] == "-":
        raise DomainError(
            "hyphen", f"label {_shown(label)} of {_shown(name)} starts or ends with a hyphen"
        )
    if label[2:4] == "--":
        if not label.startswith(_ACE_PREFIX):
            # RFC 5891 section 4.2.3.1 reserves "??--" for future ACE prefixes.
            raise DomainError(
                "hyphen",
                f"label {_shown(label)} of {_shown(name)} has hyphens in positions 3 and 4",
            )
        _check_ace_label(label, name)


def validate_domain(name: str) -> str:
    """Return ``name`` unchanged if it is a canonical ledger domain name.

    Raises :class:`DomainError` otherwise; never anything else.
    """
    if not name:
        raise DomainError("empty", "domain name is empty")
    if name.endswith("."):
        raise DomainError("trailing_dot", f"{_shown(name)} has a trailing dot")
    if _is_ip_literal(name):
        raise DomainError("ip_address", f"{_shown(name)} is an IP address, not a domain name")
    if len(name) > MAX_DOMAIN_LEN:
        raise DomainError("too_long", f"domain name exceeds {MAX_DOMAIN_LEN} octets")
    if any(ch in _UPPERCASE for ch in name):
        raise DomainError("uppercase", f"{_shown(name)} is not lowercase")
    bad = next((ch for ch in name if ch not in _NAME_CHARS), None)
    if bad is not None:
        raise DomainError("bad_char", f"{_shown(name)} contains {bad!r}")

    labels = name.split(".")
    wildcard = labels[0] == WILDCARD_LABEL
    # A wildcard directly over a single label (e.g. "*.com") would cover a
    # whole top-level domain, so it counts as a single-label name.
    if len(labels) - int(wildcard) < 2:
        raise DomainError("single_label", f"{_shown(name)} needs at least two labels")
    for index, label in enumerate(labels):
        _check_label(label, index, name)
    if labels[-1].isdigit():
        raise DomainError("numeric_tld", f"{_shown(name)} has an all-numeric top-level label")
    return name


def normalize_domain(user_input: str) -> str:
    """Turn user input into the canonical ledger form, or raise DomainError.

    Client-side only: UTS 46 mapping is a convenience for people typing names,
    and the ledger must never accept anything but what it is given verbatim.
    """
    text = user_input.translate(_ALT_DOTS)
    if text.endswith("."):
        text = text[:-1]
    out: list[str] = []
    for index, label in enumerate(text.split(".")):
        if index == 0 and label == WILDCARD_LABEL:
            out.append(label)
        elif label.isascii():
            out.append(label.lower())
        else:
            # str.lower() is deliberately not applied here: its final-sigma
            # rule maps "Σ" to "ς" at the end of a word, whereas UTS 46 maps it
            # to "σ", which yields a different A-label.
            try:
                out.append(idna.encode(label, uts46=True).decode("ascii"))
            except (UnicodeError, ValueError) as exc:
                raise DomainError(
                    "bad_idna", f"label {_shown(label)} cannot be converted to an A-label"
                ) from exc
    return validate_domain(".".join(out))


def is_wildcard(name: str) -> bool:
    """Whether a canonical name is a wildcard name (``*.example.com``)."""
    return name.startswith(WILDCARD_LABEL + ".")


def base_domain(name: str) -> str:
    """The name a wildcard stands over; non-wildcard names are returned as is."""
    if is_wildcard(name):
        return name[len(WILDCARD_LABEL) + 1 :]
    return name


def domain_matches(pattern: str, host: str) -> bool:
    """RFC 6125 matching of a certified name ``pattern`` against ``host``.

    Both must be canonical.  A wildcard covers exactly one additional
    left-most label, never the base name itself nor deeper names.
    """
    if pattern == host:
        return True
    if not is_wildcard(pattern) or is_wildcard(host):
        return False
    first, dot, rest = host.partition(".")
    return bool(first) and bool(dot) and rest == base_domain(pattern)


def validate_domain_list(names: Sequence[str], max_names: int) -> list[str]:
    """Validate the names of one certificate and return them in ledger order."""
    if isinstance(names, str):
        # A str is itself a Sequence[str]; iterating it would validate
        # single characters and report a confusing reason.
        raise TypeError("names must be a sequence of names, not a single string")
    if not names:
        raise DomainError("empty_list", "at least one domain name is required")
    if len(names) > max_names:
        raise DomainError("too_many", f"{len(names)} names given, at most {max_names} allowed")
    seen: set[str] = set()
    for name in names:
        validate_domain(name)
        if name in seen:
            raise DomainError("duplicate", f"{_shown(name)} is listed more than once")
        seen.add(name)
    return sorted(seen)
