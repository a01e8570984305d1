"""crmsync.vault: AES-GCM sealing of connection credentials (pure, no server)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync import vault

A, B = vault.new_key(), vault.new_key()


@given(
    cid=st.text(min_size=1, max_size=64),
    secrets=st.dictionaries(
        st.sampled_from(["token", "client_secret", "refresh_token"]), st.text()
    ),
)
def test_what_is_sealed_opens_to_the_same_and_shows_nothing(
    cid: str, secrets: dict[str, str]
) -> None:
    ring = vault.keyring(A)
    sealed = ring.seal(cid, secrets)
    assert ring.open(cid, sealed) == secrets
    assert sealed.startswith(f"v1.{ring.current_id}.")
    for value in secrets.values():
        if len(value) >= 4:
            assert value not in sealed
    assert ring.seal(cid, secrets) != sealed  # a fresh nonce every time


def test_a_sealed_value_is_bound_to_its_connection_and_key() -> None:
    ring = vault.keyring(A)
    sealed = ring.seal("sf", {"token": "t0k3n"})
    with pytest.raises(vault.SecretsError, match="belongs to another connection"):
        ring.open("hs", sealed)
    with pytest.raises(vault.SecretsError, match="encrypted with key id"):
        vault.keyring(B).open("sf", sealed)
    flipped = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    with pytest.raises(vault.SecretsError, match="altered"):
        ring.open("sf", flipped)
    with pytest.raises(vault.SecretsError, match="not a value crmsync sealed"):
        ring.open("sf", "plain-token")
    with pytest.raises(vault.SecretsError, match="no encrypted credentials"):
        ring.open("sf", None)


def test_the_first_key_seals_and_every_key_opens() -> None:
    old, both = vault.keyring(A), vault.keyring(f"{B}, {A}")
    assert both.current_id == vault.keyring(B).current_id
    assert both.ids == (vault.keyring(B).current_id, old.current_id)
    assert both.open("x", old.seal("x", {"token": "t"})) == {"token": "t"}
    assert vault.keyring(B).open("x", both.seal("x", {"token": "t"})) == {"token": "t"}


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("", "CRMSYNC_SECRET_KEY is not set"),
        ("not base64", "CRMSYNC_SECRET_KEY must be base64 of 32 random bytes"),
        (base64.b64encode(b"x" * 16).decode(), "must be base64 of 32"),
        (f"{A},short", "CRMSYNC_SECRET_KEY (key 2) must be base64"),
    ],
)
def test_bad_settings_are_one_sentence_without_the_key(setting: str, says: str) -> None:
    with pytest.raises(vault.SecretsError) as exc:
        vault.keyring(setting)
    assert says in str(exc.value) and "\n" not in str(exc.value)
    assert A not in str(exc.value)


def test_no_key_in_a_repr() -> None:
    ring = vault.keyring(A)
    assert A not in repr(ring) and repr(ring) == f"Keyring(ids=('{ring.current_id}',))"
    assert len(ring.current_id) == 12


def test_settings_never_show_keys_in_their_repr() -> None:
    from crmsync.settings import Settings

    s = Settings(secret_key=A, api_keys="bootstrap-admin-key")
    assert A not in repr(s) and "bootstrap-admin-key" not in repr(s)
