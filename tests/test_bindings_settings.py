"""The identity sources' configuration as a network manager writes it, and the names the
sources report (user names, MAC addresses) as the sources send them."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from schoolgate.bindings.names import (
    UnusableName,
    normalise_address,
    normalise_mac,
    parse_principal,
)
from schoolgate.core.configfile import Issues, Section, load_yaml
from schoolgate.core.identity_settings import (
    IdentitySources,
    parse_listen,
    read_identity_sources,
)

ROLES = {"student", "staff", "guest", "sixth_form"}

FULL = """\
identity:
  sources: [negotiate, radius, sign_in]
  radius:
    listen: "0.0.0.0:1813"
    secret_file: radius.secret
    clients: [10.0.0.2/32, 10.0.1.0/28]
    idle_minutes: 90
  sign_in:
    idle_minutes: 30
    max_minutes: 420
    directory:
      servers: [ldaps://dc1.school.local, ldaps://dc2.school.local]
      bind_dn: "CN=svc-schoolgate,OU=Service Accounts,DC=school,DC=local"
      bind_password_file: ldap.secret
      user_base: "DC=school,DC=local"
      user_filter: "(sAMAccountName={user})"
      group_base: "OU=Groups,DC=school,DC=local"
      nested_groups: true
      roles:
        - {group: Staff, role: teacher}
        - {group: "CN=Year 12,OU=Groups,DC=school,DC=local", role: sixth_form}
        - {group: Students, role: student}
  negotiate:
    keytab: HTTP.keytab
    service_host: proxy.school.local
    realms: [school.local, SCHOOL]
    ntlm: {users_file: ntlm-users}
  dhcp:
    leases:
      - {format: isc, path: dhcpd.leases}
      - {format: kea, path: /nonexistent/kea-leases4.csv}
    check_seconds: 10
"""


def read(tmp_path: Path, text: str) -> tuple[IdentitySources, Issues]:
    for name, content in {
        "radius.secret": "a-long-random-shared-secret-0123456789\n",
        "ldap.secret": "service-password\n",
        "HTTP.keytab": "keytab bytes",
        "ntlm-users": "SCHOOL:staff1:password\n",
        "dhcpd.leases": "",
    }.items():
        (tmp_path / name).write_text(content)
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(text))
    issues = Issues()
    data = load_yaml(config, issues, shown="config.yaml")
    assert data is not None, issues.items
    root = Section(data, file="config.yaml", path="", issues=issues)
    sources = read_identity_sources(
        root.section("identity"), base=tmp_path, roles=ROLES, aliases={"teacher": "staff"}
    )
    return sources, issues


def messages(issues: Issues) -> list[str]:
    return sorted(str(i) for i in issues.items)


def test_the_full_example_reads_cleanly(tmp_path: Path) -> None:
    sources, issues = read(tmp_path, FULL)
    assert messages(issues) == []
    assert sources.sources == ("negotiate", "radius", "sign_in")
    radius = sources.radius
    assert radius is not None
    assert (radius.host, radius.port, radius.idle_minutes) == ("0.0.0.0", 1813, 90)
    assert radius.secret == b"a-long-random-shared-secret-0123456789"
    assert radius.clients == (
        ipaddress.ip_network("10.0.0.2/32"),
        ipaddress.ip_network("10.0.1.0/28"),
    )
    assert "0123456789" not in repr(radius)
    sign_in = sources.sign_in
    assert sign_in is not None and sign_in.directory is not None
    directory = sign_in.directory
    assert (sign_in.idle_minutes, sign_in.max_minutes) == (30, 420)
    assert directory.bind_password == "service-password"
    assert [(r.group, r.role) for r in directory.roles] == [
        ("Staff", "staff"),
        ("CN=Year 12,OU=Groups,DC=school,DC=local", "sixth_form"),
        ("Students", "student"),
    ]
    assert directory.nested_groups and directory.user_filter == "(sAMAccountName={user})"
    negotiate = sources.negotiate
    assert negotiate is not None
    assert negotiate.realms == ("SCHOOL.LOCAL", "SCHOOL")
    assert negotiate.ntlm_users_file == tmp_path / "ntlm-users"
    dhcp = sources.dhcp
    assert dhcp is not None and dhcp.check_seconds == 10
    assert [(f.format, f.path.name) for f in dhcp.files] == [
        ("isc", "dhcpd.leases"),
        ("kea", "kea-leases4.csv"),
    ]
    assert [str(w) for w in issues.warnings] == [
        "config.yaml:31: identity.dhcp.leases[1].path: /nonexistent/kea-leases4.csv does not "
        "exist yet; it is read when it appears"
    ]


def test_without_sources_the_default_order_of_what_is_configured(tmp_path: Path) -> None:
    text = FULL.replace("  sources: [negotiate, radius, sign_in]\n", "")
    sources, issues = read(tmp_path, text)
    assert messages(issues) == []
    assert sources.sources == ("negotiate", "radius", "sign_in")
    text = FULL.replace("[negotiate, radius, sign_in]", "[sign_in, radius]")
    sources, issues = read(tmp_path, text)
    assert sources.sources == ("sign_in", "radius")
    assert [str(w) for w in issues.warnings if "sources" in str(w)] == [
        "config.yaml:23: identity.negotiate: configured but not in identity.sources: its "
        "bindings are not used"
    ]


def test_mistakes_are_reported_with_file_line_and_field(tmp_path: Path) -> None:
    text = """\
    identity:
      sources: [radius, dhcp, wifi, radius, negotiate]
      radius:
        listen: "0.0.0.0:99999"
        clients: [0.0.0.0/0, 10.0.0.300/32]
        idle_minutes: 1
        secrt: x
      sign_in:
        directory:
          servers: [ldap://dc1.school.local, ldaps://dc2.school.local, http://dc3]
          start_tls: false
          user_filter: "(sAMAccountName=user"
          roles:
            - {group: Staff, role: headteacher}
    """
    sources, issues = read(tmp_path, text)
    # A mapping's own problems are reported at its first key's line.
    assert messages(issues) == sorted(
        [
            "config.yaml:2: identity.sources[1]: dhcp names devices, not people: it is not a "
            "source of bindings",
            "config.yaml:2: identity.sources[2]: unknown source 'wifi'; expected negotiate, "
            "radius, sign_in",
            "config.yaml:2: identity.sources[3]: radius is listed twice",
            "config.yaml:2: identity.sources[4]: negotiate is listed but identity.negotiate is "
            "not configured",
            "config.yaml:4: identity.radius: missing required field 'secret' or 'secret_file' "
            "(the shared secret)",
            "config.yaml:4: identity.radius.listen: expected an address such as 0.0.0.0:1813, "
            "got text ('0.0.0.0:99999'): port must be 1-65535, got '99999'",
            "config.yaml:5: identity.radius.clients[0]: 0.0.0.0/0 would take accounting from "
            "anyone, pupils included; list the Wi-Fi controllers' and switches' addresses",
            "config.yaml:5: identity.radius.clients[1]: expected a network such as "
            "10.0.0.2/32: '10.0.0.300/32' does not appear to be an IPv4 or IPv6 network",
            "config.yaml:6: identity.radius.idle_minutes: expected a whole number of at least "
            "5, got 1",
            "config.yaml:7: identity.radius.secrt: unknown key (did you mean 'secret'?); "
            "expected one of: clients, idle_minutes, keep_realm, listen, secret, secret_file",
            "config.yaml:10: identity.sign_in.directory: say how to find a user: user_base "
            "(and user_filter) to search for the user's entry, or bind_as such as "
            "'{user}@school.local' for Active Directory",
            "config.yaml:10: identity.sign_in.directory.servers[0]: passwords would cross the "
            "network in clear text: use ldaps://, or start_tls: true (or allow_plaintext: "
            "true for a directory on this host)",
            "config.yaml:10: identity.sign_in.directory.servers[2]: expected ldaps://HOST or "
            "ldap://HOST, got 'http://dc3'",
            "config.yaml:12: identity.sign_in.directory.user_filter: not an LDAP filter: "
            "'(sAMAccountName=user'",
            "config.yaml:12: identity.sign_in.directory.user_filter: expected {user} in "
            "'(sAMAccountName=user' (where the user's goes)",
            "config.yaml:14: identity.sign_in.directory.roles[0].role: unknown role "
            "'headteacher'; roles are guest, sixth_form, staff, student",
        ]
    )
    assert sources.radius is None


def test_negotiate_needs_a_keytab_that_exists(tmp_path: Path) -> None:
    text = """\
    identity:
      negotiate:
        keytab: missing.keytab
    """
    _, issues = read(tmp_path, text)
    assert messages(issues) == [
        f"config.yaml:3: identity.negotiate.keytab: no such file: {tmp_path / 'missing.keytab'} "
        "(export it with ktpass or msktutil)"
    ]


def test_lease_formats_are_checked(tmp_path: Path) -> None:
    text = """\
    identity:
      dhcp:
        leases:
          - {format: windows, path: dhcpd.leases}
    """
    _, issues = read(tmp_path, text)
    assert messages(issues) == [
        "config.yaml:4: identity.dhcp.leases[0].format: expected one of isc, dnsmasq, kea, got "
        "'windows'"
    ]


def test_a_secret_file_that_is_empty_is_an_error(tmp_path: Path) -> None:
    text = FULL.replace("secret_file: radius.secret", "secret_file: empty.secret")
    (tmp_path / "empty.secret").write_text("\n")
    _, issues = read(tmp_path, text)
    assert messages(issues) == [
        f"config.yaml:5: identity.radius.secret_file: {tmp_path / 'empty.secret'} is empty; "
        "expected the shared secret on its first line"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:1813", ("0.0.0.0", 1813)),
        (":1814", ("0.0.0.0", 1814)),
        ("[::]:1813", ("::", 1813)),
        (1813, ("0.0.0.0", 1813)),
        ("10.0.0.1:1813", ("10.0.0.1", 1813)),
    ],
)
def test_parse_listen(text, expected) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["dc1:1813", "[::]1813", "1.2.3.4:0", True, "::"])
def test_parse_listen_refuses(text) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


@pytest.mark.parametrize(
    ("raw", "kind", "name", "realm"),
    [
        ("pupil1", "person", "pupil1", None),
        ("SCHOOL\\Pupil1", "person", "pupil1", "school"),
        ("Pupil1@School.Local", "person", "pupil1", "school.local"),
        ("pupil1@SCHOOL.LOCAL", "person", "pupil1", "school.local"),
        ("host/LAPTOP-12.school.local", "machine", "laptop-12.school.local", None),
        ("host/laptop-12@SCHOOL.LOCAL", "machine", "laptop-12", "school.local"),
        ("SCHOOL\\LAPTOP-12$", "machine", "laptop-12", "school"),
        ("LAPTOP-12$@SCHOOL.LOCAL", "machine", "laptop-12", "school.local"),
        ("AA-BB-CC-DD-EE-FF", "machine", "aa:bb:cc:dd:ee:ff", None),
        ("aabbccddeeff", "machine", "aa:bb:cc:dd:ee:ff", None),
        ("o'neil.j", "person", "o'neil.j", None),
    ],
)
def test_parse_principal(raw, kind, name, realm) -> None:
    principal = parse_principal(raw)
    assert (principal.kind, principal.name, principal.realm) == (kind, name, realm)


def test_keep_realm() -> None:
    assert parse_principal("SCHOOL\\pupil1", keep_realm=True).name == "pupil1@school"
    assert parse_principal("pupil1@school.local", keep_realm=True).name == "pupil1@school.local"


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "anonymous", "anonymous@school.org.uk", "@school.local", "a\\b\\c", "pupil\x00",
     "x" * 201, "host/", "$"],
)  # fmt: skip
def test_unusable_names(raw) -> None:
    with pytest.raises(UnusableName):
        parse_principal(raw)


def test_mac_and_address_spellings() -> None:
    for text in ("AA-BB-CC-DD-EE-FF", "aa:bb:cc:dd:ee:ff", "aabb.ccdd.eeff", "AABBCCDDEEFF"):
        assert normalise_mac(text) == "aa:bb:cc:dd:ee:ff"
    for text in ("aa:bb:cc:dd:ee", "aa:bb-cc:dd:ee:ff", "zz:bb:cc:dd:ee:ff", "", None):
        assert normalise_mac(text) is None
    assert normalise_address("::ffff:10.20.1.5") == "10.20.1.5"
    assert normalise_address("fe80::1%eth0") == "fe80::1"
    assert normalise_address("2001:DB8:0::5") == "2001:db8::5"
    with pytest.raises(ValueError):
        normalise_address("10.20.1.300")
