"""Password checks against a real directory: Debian's slapd, started by the test on loopback
with a small school in it, reached over LDAPS and StartTLS with a test CA."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway_process import free_port
from slapd_server import DIRECTORY_PASSWORDS, SUFFIX, SlapdServer, directory_settings, make_ca

from schoolgate.bindings.directory import (
    AccountUnusable,
    Directory,
    DirectoryUnavailable,
    NoRole,
    WrongPassword,
)
from schoolgate.core.identity_settings import DirectorySettings, RoleGroup

PUPIL_PASSWORD = DIRECTORY_PASSWORDS["pupil1"][0]
STAFF_PASSWORD = DIRECTORY_PASSWORDS["staff1"][0]


@pytest.fixture(scope="module")
def slapd(school_directory: SlapdServer) -> SlapdServer:
    return school_directory


def settings(slapd: SlapdServer, **changes) -> DirectorySettings:
    return directory_settings(slapd, **changes)


def binds_for(slapd: SlapdServer, uid: str) -> int:
    return slapd.log_text().count(f'BIND dn="uid={uid},ou=people,{SUFFIX}"')


def test_right_password_gives_the_role_of_the_users_groups(slapd: SlapdServer) -> None:
    directory = Directory(settings(slapd))
    user = directory.authenticate("pupil1", PUPIL_PASSWORD)
    assert (user.username, user.role, user.display_name) == ("pupil1", "student", "Pupil One")
    assert f"cn=students,ou=groups,{SUFFIX}" in user.groups
    # Names typed the Windows way are the same person.
    assert directory.authenticate("SCHOOL\\Pupil1", PUPIL_PASSWORD).username == "pupil1"
    assert directory.authenticate("staff1@school.test", STAFF_PASSWORD).role == "staff"


def test_start_tls_on_the_plain_port(slapd: SlapdServer) -> None:
    directory = Directory(settings(slapd, servers=(slapd.ldap_url,), start_tls=True))
    assert directory.authenticate("staff1", STAFF_PASSWORD).role == "staff"
    assert "STARTTLS" in slapd.log_text()


def test_wrong_password_and_unknown_user_look_the_same(slapd: SlapdServer) -> None:
    directory = Directory(settings(slapd))
    with pytest.raises(WrongPassword) as wrong:
        directory.authenticate("pupil1", "not it")
    with pytest.raises(WrongPassword) as unknown:
        directory.authenticate("nobody", "not it")
    assert wrong.value.message == unknown.value.message
    assert "bind as 'pupil1' refused" in wrong.value.detail
    assert "no directory entry for 'nobody'" in unknown.value.detail


def test_empty_password_never_reaches_the_directory(slapd: SlapdServer) -> None:
    # An LDAP simple bind with a DN and no password is an anonymous bind that "succeeds".
    before = binds_for(slapd, "pupil1")
    for password in ("", "\x00"):
        with pytest.raises(WrongPassword):
            Directory(settings(slapd)).authenticate("pupil1", password)
    assert binds_for(slapd, "pupil1") == before


@pytest.mark.parametrize("name", ["*", "pupil*", "pupil1)(uid=*", "*)(|(uid=*", "pupil1\\"])
def test_filter_injection_finds_nobody(slapd: SlapdServer, name: str) -> None:
    with pytest.raises(WrongPassword):
        Directory(settings(slapd)).authenticate(name, PUPIL_PASSWORD)


def test_no_group_with_a_role_is_refused_unless_a_default_role(slapd: SlapdServer) -> None:
    with pytest.raises(NoRole):
        Directory(settings(slapd)).authenticate("visitor1", "Visitor pass 3")
    user = Directory(settings(slapd, default_role="guest")).authenticate(
        "visitor1", "Visitor pass 3"
    )
    assert user.role == "guest"


def test_groups_found_by_search_under_group_base(slapd: SlapdServer) -> None:
    # Without the memberOf overlay's attribute (as on many OpenLDAP servers): group search.
    directory = Directory(
        settings(
            slapd,
            group_base=f"ou=groups,{SUFFIX}",
            roles=(RoleGroup("students", "student"),),
        )
    )
    directory_groups = directory.authenticate("pupil2", "Another pupil 4").groups
    assert f"cn=students,ou=groups,{SUFFIX}" in directory_groups


def test_direct_bind_with_a_dn_template(slapd: SlapdServer) -> None:
    directory = Directory(
        settings(
            slapd,
            bind_dn=None,
            bind_password=None,
            bind_as=f"uid={{user}},ou=people,{SUFFIX}",
        )
    )
    assert directory.authenticate("pupil1", PUPIL_PASSWORD).role == "student"
    with pytest.raises(WrongPassword):
        directory.authenticate("pupil1", "not it")
    # The user's part is escaped in the DN: a comma cannot pick another entry.
    with pytest.raises(WrongPassword):
        directory.authenticate(f"pupil1,ou=people,{SUFFIX}", PUPIL_PASSWORD)


def test_unreachable_directory_fails_closed_with_its_own_error(slapd: SlapdServer) -> None:
    nowhere = f"ldaps://127.0.0.1:{free_port()}"
    with pytest.raises(DirectoryUnavailable) as caught:
        Directory(settings(slapd, servers=(nowhere,), timeout_seconds=2)).authenticate(
            "pupil1", PUPIL_PASSWORD
        )
    assert "no directory server answered" in caught.value.detail
    assert "cannot be reached" in caught.value.message
    # The next server in the list is tried.
    both = Directory(settings(slapd, servers=(nowhere, slapd.ldaps_url)))
    assert both.authenticate("pupil1", PUPIL_PASSWORD).role == "student"


def test_a_directory_that_goes_down_fails_closed(slapd: SlapdServer) -> None:
    directory = Directory(settings(slapd))
    slapd.stop()
    try:
        with pytest.raises(DirectoryUnavailable):
            directory.authenticate("pupil1", PUPIL_PASSWORD)
    finally:
        slapd.start()
    assert directory.authenticate("pupil1", PUPIL_PASSWORD).role == "student"


def test_certificates_are_checked(slapd: SlapdServer, tmp_path: Path) -> None:
    other_ca, _, _ = make_ca(tmp_path, "another CA")
    with pytest.raises(DirectoryUnavailable):
        Directory(settings(slapd, ca_file=other_ca)).authenticate("pupil1", PUPIL_PASSWORD)
    wrong_name = f"ldaps://127.0.0.2:{slapd.ldaps_port}"
    with pytest.raises(DirectoryUnavailable) as caught:
        Directory(settings(slapd, servers=(wrong_name,))).authenticate("pupil1", PUPIL_PASSWORD)
    assert "127.0.0.2" in caught.value.detail
    # verify: false is the administrator's explicit choice.
    unchecked = Directory(settings(slapd, servers=(wrong_name,), verify=False))
    assert unchecked.authenticate("pupil1", PUPIL_PASSWORD).role == "student"


def test_a_refused_service_account_is_unavailable_not_a_wrong_password(
    slapd: SlapdServer,
) -> None:
    directory = Directory(settings(slapd, bind_password="wrong"))
    with pytest.raises(DirectoryUnavailable) as caught:
        directory.authenticate("pupil1", PUPIL_PASSWORD)
    assert "service account" in caught.value.detail
    with pytest.raises(DirectoryUnavailable):
        directory.check()
    assert Directory(settings(slapd)).check() == f"127.0.0.1:{slapd.ldaps_port}"


def test_active_directory_reasons_are_told_apart() -> None:
    directory = Directory(
        DirectorySettings(servers=("ldaps://dc.school.local",), bind_as="{user}@school.local")
    )
    message = "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data {}"
    with pytest.raises(AccountUnusable) as locked:
        directory._refused({"result": 49, "message": message.format("775")}, "pupil1")
    assert "locked out" in locked.value.message
    with pytest.raises(AccountUnusable) as disabled:
        directory._refused({"result": 49, "message": message.format("533")}, "pupil1")
    assert "disabled" in disabled.value.message
    with pytest.raises(WrongPassword):
        directory._refused({"result": 49, "message": message.format("52e")}, "pupil1")
