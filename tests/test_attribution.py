"""Attribution: salted key fingerprints (never the key), aliases, project and session precedence, sanitising."""

from __future__ import annotations

import re

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.server.attribution import MAX_LABEL, SESSION_HEADERS, Attributor, TwoKeys, clean, fingerprint, presented_key
from proxy.config import KeyAlias

# Built from parts so no literal that looks like a real key is committed.
KEY = "sk-or-v1-" + "0123456789abcdef" * 2
SALT = b"\x01" * 16


def headers(**pairs: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({name.replace("_", "-"): value for name, value in pairs.items()}))


def h(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_fingerprint_is_salted_and_never_the_key() -> None:
    one = fingerprint(KEY, SALT)
    assert re.fullmatch(r"[0-9a-f]{16}", one)
    assert one == fingerprint(KEY, SALT)
    assert one != fingerprint(KEY, b"\x02" * 16)
    assert one != fingerprint(KEY + "x", SALT)
    assert KEY not in one and KEY[-8:] not in one and KEY[-4:] not in one


def test_fingerprint_of_non_utf8_key_does_not_raise() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint("sk-\udcff", SALT))


@pytest.mark.parametrize(
    ("pairs", "key"),
    [
        ((("Authorization", f"Bearer {KEY}"),), KEY),
        ((("Authorization", f"bearer   {KEY}  "),), KEY),
        ((("x-api-key", KEY),), KEY),
        ((("X-Api-Key", f" {KEY} "),), KEY),
        ((("Authorization", f"Bearer {KEY}"), ("x-api-key", KEY)), KEY),
        ((("Authorization", f"Bearer {KEY}"), ("Authorization", f"bearer {KEY}")), KEY),
        ((("Authorization", "Bearer "), ("x-api-key", KEY)), KEY),
        # A credential without the Bearer scheme still names what the upstream may bill.
        ((("Authorization", KEY),), KEY),
        ((("Authorization", "Basic dXNlcjpwYXNz"),), "Basic dXNlcjpwYXNz"),
        ((("Authorization", "Bearer "),), None),
        ((("Authorization", "Bearer"),), None),
        ((("x-api-key", "   "),), None),
        ((), None),
    ],
)
def test_presented_key(pairs: tuple[tuple[str, str], ...], key: str | None) -> None:
    assert presented_key(h(*pairs)) == key


@pytest.mark.parametrize(
    "pairs",
    [
        (("Authorization", f"Bearer {KEY}"), ("x-api-key", "other")),
        (("Authorization", "Basic dXNlcjpwYXNz"), ("x-api-key", KEY)),
        (("Authorization", "Bearer junk"), ("Authorization", f"Bearer {KEY}")),
        (("x-api-key", "junk"), ("x-api-key", KEY)),
    ],
)
def test_two_different_credentials_are_refused(pairs: tuple[tuple[str, str], ...]) -> None:
    # The upstream may bill either one, so a budget could not know which key it is checking.
    with pytest.raises(TwoKeys):
        presented_key(h(*pairs))


def test_same_key_by_either_header_has_one_fingerprint() -> None:
    attributor = Attributor(SALT)
    by_bearer = attributor.of(h(("Authorization", f"Bearer {KEY}")))
    by_api_key = attributor.of(h(("x-api-key", KEY)))
    assert by_bearer.key_fingerprint == by_api_key.key_fingerprint == fingerprint(KEY, SALT)


def test_no_key_no_fingerprint() -> None:
    assert Attributor(SALT).of(h()).key_fingerprint is None


def test_alias_by_key_env() -> None:
    aliases = (KeyAlias(alias="ci", key_env="CI_KEY", project="builds"),)
    attributor = Attributor(SALT, aliases, environ={"CI_KEY": KEY})
    who = attributor.of(h(("Authorization", f"Bearer {KEY}")))
    assert (who.key_alias, who.project) == ("ci", "builds")
    assert attributor.of(h(("Authorization", "Bearer sk-other"))).key_alias is None


def test_alias_by_key_env_missing_from_environment_matches_nothing() -> None:
    attributor = Attributor(SALT, (KeyAlias(alias="ci", key_env="CI_KEY"),), environ={})
    assert attributor.of(h(("Authorization", f"Bearer {KEY}"))).key_alias is None
    assert attributor.of(h()).key_alias is None


def test_alias_by_fingerprint() -> None:
    aliases = (KeyAlias(alias="laptop", fingerprint=fingerprint(KEY, SALT)),)
    who = Attributor(SALT, aliases, environ={}).of(h(("x-api-key", KEY)))
    assert who.key_alias == "laptop" and who.project is None


def test_fingerprint_alias_from_another_salt_does_not_match() -> None:
    aliases = (KeyAlias(alias="laptop", fingerprint=fingerprint(KEY, b"other salt")),)
    assert Attributor(SALT, aliases, environ={}).of(h(("x-api-key", KEY))).key_alias is None


@pytest.mark.parametrize(
    ("path_project", "pairs", "project"),
    [
        ("from-path", (("X-Spend-Project", "from-header"),), "from-path"),
        (None, (("X-Spend-Project", "from-header"),), "from-header"),
        (None, (("x-spend-project", "lower"),), "lower"),
        ("from-path", (), "from-path"),
        (None, (), "alias-project"),
        ("", (("X-Spend-Project", ""),), "alias-project"),
        (None, (("X-Spend-Project", "p" * 100),), "p" * 64),
    ],
)
def test_project_precedence(path_project: str | None, pairs: tuple[tuple[str, str], ...], project: str) -> None:
    aliases = (KeyAlias(alias="a", key_env="K", project="alias-project"),)
    attributor = Attributor(SALT, aliases, environ={"K": KEY})
    assert attributor.of(h(("x-api-key", KEY), *pairs), path_project).project == project


def test_session_headers_in_order_of_precedence() -> None:
    assert SESSION_HEADERS[0] == "X-Spend-Session"
    attributor = Attributor(SALT)
    for index, name in enumerate(SESSION_HEADERS):
        later = [(other, f"s{j}") for j, other in enumerate(SESSION_HEADERS) if j >= index]
        # Sent in reverse order: header order must not matter, only precedence.
        assert attributor.of(h(*reversed(later))).session == f"s{index}", name


def test_empty_session_header_falls_through() -> None:
    who = Attributor(SALT).of(h(("X-Spend-Session", ""), ("X-Claude-Code-Session-Id", "abc")))
    assert who.session == "abc"


@pytest.mark.parametrize(
    ("pairs", "client"),
    [
        ((("X-Title", "Aider"), ("User-Agent", "python-httpx/0.27")), "Aider"),
        ((("X-OpenRouter-Title", "Kilo Code"), ("User-Agent", "ua")), "Kilo_Code"),
        ((("User-Agent", "claude-cli/2.0.1 (external, cli)"),), "claude-cli/2.0.1__external__cli_"),
        ((), None),
    ],
)
def test_client(pairs: tuple[tuple[str, str], ...], client: str | None) -> None:
    assert Attributor(SALT).of(h(*pairs)).client == client


@pytest.mark.parametrize(
    ("value", "cleaned"),
    [
        ("plain-id_1.2:3@x/y+z=", "plain-id_1.2:3@x/y+z="),
        ("line\nbreak", "line_break"),
        ("cr\r\nlf", "cr__lf"),
        ('quote"s and \'single\'', "quote_s_and__single_"),
        ("tab\tand\x00nul\x1b[31m", "tab_and_nul__31m"),
        ("ünïcødé", "_n_c_d_"),
        ("<script>", "_script_"),
        ("a,b;c{d}", "a_b_c_d_"),
        ("  padded  ", "padded"),
        ("\n", None),
        ("", None),
        (None, None),
        ("x" * 1000, "x" * MAX_LABEL),
    ],
)
def test_clean(value: str | None, cleaned: str | None) -> None:
    assert clean(value) == cleaned


def test_hostile_header_values_never_reach_the_attribution_raw() -> None:
    hostile = 'evil"\n\r\x00' + "\udcff" * 3 + "y" * 10_000
    who = Attributor(SALT).of(
        h(("X-Spend-Session", hostile), ("X-Spend-Project", hostile), ("X-Title", hostile)), None
    )
    for value, limit in ((who.session, MAX_LABEL), (who.project, 64), (who.client, 64)):
        assert value is not None
        assert len(value) <= limit
        assert re.fullmatch(r"[A-Za-z0-9._:@/+=-]+", value)


def test_the_key_appears_in_no_attribution_field() -> None:
    who = Attributor(SALT).of(h(("Authorization", f"Bearer {KEY}"), ("User-Agent", "agent")))
    assert all(KEY not in str(value) for value in (who.key_fingerprint, who.key_alias, who.project, who.session, who.client))


@pytest.mark.parametrize(
    ("path_project", "pairs"),
    [
        ("from-path", ()),
        (None, (("X-Spend-Project", "from-header"),)),
        ("from-path", (("X-Spend-Project", "from-header"),)),
    ],
)
def test_managed_key_project_wins_over_what_the_client_sends(path_project: str | None, pairs: tuple[tuple[str, str], ...]) -> None:
    # In managed mode the operator assigns a proxy key to a project: a client must not pick
    # another one (and with it dodge the project's budget) by a header or a /p/<project>/ URL.
    aliases = (KeyAlias(alias="a", key_env="K", project="alias-project"), KeyAlias(alias="b", key_sha256="0" * 64))
    attributor = Attributor(SALT, aliases, environ={"K": KEY}, managed=True)
    assert attributor.of(h(("x-api-key", KEY), *pairs), path_project).project == "alias-project"
    # A proxy key without a configured project still takes the client's.
    other = Attributor(SALT, (KeyAlias(alias="a", key_env="K"),), environ={"K": KEY}, managed=True)
    assert other.of(h(("x-api-key", KEY), *pairs), path_project).project in ("from-path", "from-header")
