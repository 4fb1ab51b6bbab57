"""The double-sign guard's own file (CONSENSUS.md §6): atomic, durable, strict."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpkid.core.consensus.engine import SignState
from dpkid.daemon.signstate import SignStateError, SignStateFile

u = st.integers(min_value=0, max_value=2**40)


@given(
    h=u,
    r=st.integers(min_value=-1, max_value=2**20),
    step=st.integers(min_value=0, max_value=3),
    bh=st.binary(max_size=32),
    ts=u,
    sig=st.binary(min_size=0, max_size=64),
    lr=st.integers(min_value=-1, max_value=2**20),
    lh=st.binary(max_size=32),
)
def test_round_trip(
    tmp_path_factory: pytest.TempPathFactory,
    h: int,
    r: int,
    step: int,
    bh: bytes,
    ts: int,
    sig: bytes,
    lr: int,
    lh: bytes,
) -> None:
    f = SignStateFile(tmp_path_factory.mktemp("ss") / "sign_state.json")
    ss = SignState(h, r, step, bh, ts, sig, lr, lh)
    f.save(ss)
    assert f.load() == ss


def test_missing_file_is_the_initial_state_and_save_replaces_atomically(tmp_path: Path) -> None:
    f = SignStateFile(tmp_path / "sign_state.json")
    assert not f.exists() and f.load() == SignState()
    f.save(SignState(5, 1, 2, b"\x01" * 32, 7, b"\x02" * 64))
    f.save(SignState(5, 1, 3, b"", 8, b"\x03" * 64))
    assert f.load().hrs() == (5, 1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sign_state.json"]  # no temp left
    assert (tmp_path / "sign_state.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"height": "5"}', b"\xff\xfe", b'{"height": true}', b"x" * 10_000],
)
def test_damaged_file_is_refused_not_treated_as_empty(tmp_path: Path, content: bytes) -> None:
    """A damaged guard must not read as "never signed": that is how double signs happen."""
    p = tmp_path / "sign_state.json"
    p.write_bytes(content)
    with pytest.raises(SignStateError, match=r"sign_state\.json"):
        SignStateFile(p).load()


@pytest.mark.slow
def test_a_deleted_file_with_stored_blocks_signs_nothing_at_the_next_height(
    tmp_path: Path,
) -> None:
    """An operator deletes sign_state.json (or restores an older backup of it
    missing) but keeps the block store: the key may have signed at the height
    after the last stored block, so the restarted node must not sign there."""
    from dpkid.daemon.daemon import NodeDaemon
    from dpkid.daemon.signstate import SIGN_STATE_FILE
    from tests.netutil import LocalNet

    net = LocalNet(tmp_path / "tn", validators=1)
    try:
        net.start(0)
        net.wait_height([0], 3, timeout_s=60)
    finally:
        net.close()
    home = net.home(0)
    (home / SIGN_STATE_FILE).unlink()
    d = NodeDaemon(home)
    try:
        stored = d.store.height()
        assert stored >= 3
        ss = d.core.status().sign_state
        assert ss.height == stored + 2
        # The conservative guard is durable at once, before any vote could leave.
        assert SignStateFile(home / SIGN_STATE_FILE).load().height == stored + 2
    finally:
        d.store.close()
