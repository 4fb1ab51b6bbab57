from __future__ import annotations

import idna
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpkid.core.domains import (
    MAX_DOMAIN_LEN,
    MAX_LABEL_LEN,
    DomainError,
    base_domain,
    domain_matches,
    is_wildcard,
    normalize_domain,
    validate_domain,
    validate_domain_list,
)

LABEL_63 = "a" * MAX_LABEL_LEN
# Three 63-octet labels, a 61-octet label and three dots: exactly 253 octets.
NAME_253 = ".".join([LABEL_63, "b" * 63, "c" * 63, "d" * 61])
NAME_254 = ".".join([LABEL_63, "b" * 63, "c" * 63, "d" * 62])


def test_length_fixtures() -> None:
    assert len(NAME_253) == MAX_DOMAIN_LEN
    assert len(NAME_254) == MAX_DOMAIN_LEN + 1


@pytest.mark.parametrize(
    "name",
    [
        "example.com",
        "www.example.com",
        "a.b.c.d.example.com",
        "a-b.example.com",
        "a--b.example.com",
        "123.example.com",
        "1a.example.com",
        "example.a1",
        "xn--bcher-kva.example",
        "xn--mnchen-3ya.de",
        "example.xn--zckzah",
        "*.example.com",
        "*.xn--bcher-kva.example",
        f"{LABEL_63}.com",
        NAME_253,
    ],
)
def test_accepts_canonical_names(name: str) -> None:
    assert validate_domain(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("example.com.", "trailing_dot"),
        (".", "trailing_dot"),
        ("192.168.0.1", "ip_address"),
        ("::1", "ip_address"),
        ("2001:db8::1", "ip_address"),
        (NAME_254, "too_long"),
        ("Example.com", "uppercase"),
        ("example.COM", "uppercase"),
        ("XN--BCHER-KVA.example", "uppercase"),
        ("exa_mple.com", "bad_char"),
        ("a b.com", "bad_char"),
        ("user@example.com", "bad_char"),
        ("example.com:443", "bad_char"),
        ("bücher.example", "bad_char"),
        ("a\x00.com", "bad_char"),
        ("a..com", "not_a_label"),
        (".example.com", "not_a_label"),
        (f"{LABEL_63}a.com", "label_too_long"),
        ("a.*.example.com", "wildcard_position"),
        ("*foo.example.com", "wildcard_position"),
        ("f*.example.com", "wildcard_position"),
        ("*.*.example.com", "wildcard_position"),
        ("example.*", "wildcard_position"),
        ("localhost", "single_label"),
        ("com", "single_label"),
        ("*.com", "single_label"),
        ("*", "single_label"),
        ("-a.example.com", "hyphen"),
        ("a-.example.com", "hyphen"),
        ("example.com-", "hyphen"),
        ("ab--cd.example.com", "hyphen"),
        ("xn--abc-.com", "hyphen"),
        ("example.123", "numeric_tld"),
        ("256.1.1.1", "numeric_tld"),
        ("1.2.3.4.5", "numeric_tld"),
        ("xn--a.com", "bad_idna"),
        ("xn--zz.com", "bad_idna"),
        # U+1F4A9 is valid under IDNA 2003 but disallowed by IDNA 2008.
        ("xn--ls8h.la", "bad_idna"),
        # A non-canonical Punycode spelling ("fake A-label").
        ("xn---bbk.com", "bad_idna"),
        ("xn--xn--bcher-kva.example", "bad_idna"),
    ],
)
def test_rejects(name: str, reason: str) -> None:
    with pytest.raises(DomainError) as info:
        validate_domain(name)
    assert info.value.reason == reason
    assert str(info.value)


def test_error_message_is_bounded() -> None:
    with pytest.raises(DomainError) as info:
        validate_domain("_" * 10_000 + ".com")
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("user_input", "expected"),
    [
        ("Bücher.Example", "xn--bcher-kva.example"),
        ("example.com", "example.com"),
        ("WWW.Example.COM.", "www.example.com"),
        ("*.Bücher.example", "*.xn--bcher-kva.example"),
        ("münchen.de", "xn--mnchen-3ya.de"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("例え。テスト", "xn--r8jz45g.xn--zckzah"),
        ("例え．テスト．", "xn--r8jz45g.xn--zckzah"),
    ],
)
def test_normalize(user_input: str, expected: str) -> None:
    assert normalize_domain(user_input) == expected


def test_normalize_maps_capital_sigma_like_uts46() -> None:
    # str.lower() would turn the final "Σ" into "ς", a different A-label.
    assert normalize_domain("ΟΔΟΣ.gr") == normalize_domain("οδοσ.gr")
    assert normalize_domain("ΟΔΟΣ.gr") != normalize_domain("οδος.gr")
    assert normalize_domain("ΟΔΟΣ.gr") == idna.encode("οδοσ").decode("ascii") + ".gr"


@pytest.mark.parametrize(
    ("user_input", "reason"),
    [
        ("", "empty"),
        ("example.com..", "trailing_dot"),
        ("💩.la", "bad_idna"),
        ("a_b.example", "bad_char"),
        ("localhost.", "single_label"),
        ("a.*.example.com", "wildcard_position"),
        ("10.0.0.1", "ip_address"),
    ],
)
def test_normalize_rejects(user_input: str, reason: str) -> None:
    with pytest.raises(DomainError) as info:
        normalize_domain(user_input)
    assert info.value.reason == reason


def test_wildcard_helpers() -> None:
    assert is_wildcard("*.example.com")
    assert not is_wildcard("example.com")
    assert not is_wildcard("a.example.com")
    assert base_domain("*.example.com") == "example.com"
    assert base_domain("www.example.com") == "www.example.com"


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("example.com", "example.com", True),
        ("example.com", "www.example.com", False),
        ("www.example.com", "example.com", False),
        ("example.com", "example.org", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "xn--bcher-kva.example.com", True),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "example.com", False),
        ("*.example.com", "aexample.com", False),
        ("*.example.com", "a.example.org", False),
        ("*.example.com", "*.example.com", True),
        ("*.example.com", "*.a.example.com", False),
        ("*.a.example.com", "b.example.com", False),
        ("a.example.com", "*.example.com", False),
    ],
)
def test_domain_matches(pattern: str, host: str, expected: bool) -> None:
    assert domain_matches(pattern, host) is expected


def test_domain_list_sorted() -> None:
    names = ["www.example.com", "*.example.com", "example.com", "a.example.org"]
    assert validate_domain_list(names, 4) == sorted(names)
    assert validate_domain_list(("b.example", "a.example"), 2) == ["a.example", "b.example"]


@pytest.mark.parametrize(
    ("names", "max_names", "reason"),
    [
        ([], 5, "empty_list"),
        (["a.example", "b.example", "c.example"], 2, "too_many"),
        (["a.example", "b.example", "a.example"], 5, "duplicate"),
        (["a.example", "Example.com"], 5, "uppercase"),
    ],
)
def test_domain_list_rejects(names: list[str], max_names: int, reason: str) -> None:
    with pytest.raises(DomainError) as info:
        validate_domain_list(names, max_names)
    assert info.value.reason == reason


def test_domain_list_refuses_bare_string() -> None:
    with pytest.raises(TypeError):
        validate_domain_list("example.com", 20)


_NAMEISH = st.text(alphabet="abxn019-.*_AZü", max_size=40)
_LABELISH = st.from_regex(r"\A(\*\.)?([a-z0-9-]{1,8}\.){1,3}[a-z0-9-]{1,8}\Z")


@given(st.one_of(st.text(), _NAMEISH, _LABELISH))
def test_validate_returns_input_or_raises_domain_error(name: str) -> None:
    try:
        result = validate_domain(name)
    except DomainError as exc:
        assert exc.reason
        return
    assert result == name
    assert len(name) <= MAX_DOMAIN_LEN
    # A canonical name is a fixed point of client-side normalisation.
    assert normalize_domain(name) == name


@given(st.one_of(st.text(), _NAMEISH))
def test_normalize_raises_only_domain_error(user_input: str) -> None:
    try:
        result = normalize_domain(user_input)
    except DomainError:
        return
    assert validate_domain(result) == result


@given(_LABELISH, _LABELISH)
def test_matching_agrees_with_label_structure(pattern: str, host: str) -> None:
    try:
        validate_domain(pattern)
        validate_domain(host)
    except DomainError:
        return
    if domain_matches(pattern, host) and pattern != host:
        assert is_wildcard(pattern)
        assert host.count(".") == pattern.count(".")
        assert host.split(".", 1)[1] == base_domain(pattern)
