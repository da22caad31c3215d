"""The Python API people script with: `lmvp.update`, `lmvp.download`, `lmvp.show_history`,
and `lmvp.Client`, against a real server process."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import lmvp
from lmvp import credentials, publish
from lmvp.hashmemo import HashMemo
from tests.support import Deployment, MemoryKeyring, free_port


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean client environment: its own config and cache dirs, no saved login."""
    monkeypatch.setenv("LMVP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("LMVP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LMVP_SERVER", raising=False)
    monkeypatch.delenv("LMVP_TOKEN", raising=False)
    return tmp_path


@pytest.fixture
def client(deployment_sqlite: Deployment, env: Path) -> Iterator[lmvp.Client]:
    user = deployment_sqlite.user("api")
    with lmvp.Client(deployment_sqlite.url, user.token) as c:
        c.username = user.username  # type: ignore[attr-defined]
        yield c


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_update_then_download_a_single_file(client: lmvp.Client, env: Path) -> None:
    project = client.create_project("single-" + os.urandom(3).hex()).name
    ckpt = env / "model.pt"
    ckpt.write_bytes(os.urandom(300_000))

    version = client.update(
        f"{project}/resnet", ckpt, message="first", metadata={"step": 100}, metrics={"loss": 0.25}
    )
    assert isinstance(version, lmvp.Version)
    assert (version.number, version.message, version.author) == (1, "first", client.username)
    assert version.metadata["step"] == 100 and version.metrics == {"loss": 0.25}
    assert [f.path for f in version.files] == ["model.pt"]

    path = client.download(f"{project}/resnet")
    assert path.name == "model.pt"
    assert path.read_bytes() == ckpt.read_bytes()


def test_update_then_download_a_checkpoint_folder(client: lmvp.Client, env: Path) -> None:
    project = client.create_project("folder-" + os.urandom(3).hex()).name
    folder = env / "checkpoint-500"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden": 64}')
    (folder / "sub" / "weights.bin").write_bytes(os.urandom(100_000))
    (folder / ".partial.tmp").write_text("not part of the checkpoint")

    version = client.update(f"{project}/bert", folder)
    assert sorted(f.path for f in version.files) == ["config.json", "sub/weights.bin"]

    path = client.download(f"{project}/bert:1")
    assert path.is_dir()
    assert (path / "config.json").read_text() == '{"hidden": 64}'
    assert _sha(path / "sub" / "weights.bin") == _sha(folder / "sub" / "weights.bin")

    out = client.download(f"{project}/bert", local_dir=env / "mine")
    assert out == env / "mine"
    assert (out / "sub" / "weights.bin").read_bytes() == (
        folder / "sub" / "weights.bin"
    ).read_bytes()


def test_update_an_in_memory_dict_of_numpy_arrays(client: lmvp.Client, env: Path) -> None:
    from safetensors.numpy import load_file

    project = client.create_project("numpy-" + os.urandom(3).hex()).name
    weights = {
        "layer.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "layer.bias": np.ones(4, dtype=np.float64),
    }
    version = client.update(f"{project}/mlp", weights)
    assert version.metadata["framework"] == "numpy"
    path = client.download(f"{project}/mlp")
    assert path.name == "model.safetensors"
    loaded = load_file(str(path))
    assert set(loaded) == set(weights)
    for key, value in weights.items():
        np.testing.assert_array_equal(loaded[key], value)


def test_update_a_torch_module(client: lmvp.Client) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    project = client.create_project("torch-" + os.urandom(3).hex()).name
    module = torch.nn.Linear(4, 2)
    version = client.update(f"{project}/linear", module)
    assert version.metadata["framework"] == "torch"
    loaded = load_file(str(client.download(f"{project}/linear")))
    assert torch.equal(loaded["weight"], module.weight.detach())


def test_refs_by_number_alias_and_latest(client: lmvp.Client, env: Path) -> None:
    project = client.create_project("refs-" + os.urandom(3).hex()).name
    for i in range(3):
        f = env / "w.bin"
        f.write_bytes(f"weights {i}".encode())
        client.update(f"{project}/m", f, message=f"v{i + 1}", aliases=["best"] if i == 0 else ())

    assert client.version(f"{project}/m").number == 3
    assert client.version(f"{project}/m:2").message == "v2"
    assert client.version(f"{project}/m:v2").message == "v2"
    assert client.version(f"{project}/m@best").number == 1
    assert client.download(f"{project}/m@best").read_bytes() == b"weights 0"
    assert client.download(f"{project}/m:2").read_bytes() == b"weights 1"
    assert [v.number for v in client.versions(f"{project}/m")] == [3, 2, 1]
    client.set_alias(f"{project}/m", "best", 3)
    assert client.download(f"{project}/m@best").read_bytes() == b"weights 2"


def test_republishing_unchanged_files_uploads_no_bytes(client: lmvp.Client, env: Path) -> None:
    project = client.create_project("dedup-" + os.urandom(3).hex()).name
    ckpt = env / "big.bin"
    ckpt.write_bytes(os.urandom(2_000_000))
    sent: list[int] = []
    client.update(f"{project}/m", ckpt, progress=sent.append)
    assert sum(sent) == 2_000_000
    sent.clear()
    second = client.update(f"{project}/m", ckpt, message="same bytes")
    assert second.number == 2
    client.update(f"{project}/m", ckpt, progress=sent.append)
    assert sum(sent) == 0


def test_show_history_prints_a_table_and_returns_versions(client: lmvp.Client, env: Path) -> None:
    project = client.create_project("hist-" + os.urandom(3).hex()).name
    f = env / "w.bin"
    for i in range(2):
        f.write_bytes(os.urandom(1000 + i))
        client.update(
            f"{project}/a",
            f,
            message=f"epoch {i}",
            metadata={"step": i * 10},
            metrics={"loss": 1.0 / (i + 1)},
        )
    client.update(f"{project}/b", f, message="other model", aliases=["prod"])

    out = io.StringIO()
    versions = client.show_history(project, file=out)
    assert [v.ref for v in versions] == [f"{project}/b:1", f"{project}/a:2", f"{project}/a:1"]
    text = out.getvalue()
    assert "VERSION" in text and "MESSAGE" in text
    assert f"{project}/a:2" in text and "epoch 1" in text and "loss=0.5" in text
    assert "prod" in text and client.username in text

    out = io.StringIO()
    assert [v.number for v in client.show_history(f"{project}/a", file=out)] == [2, 1]
    assert "other model" not in out.getvalue()


def test_module_functions_use_the_environment(
    deployment_sqlite: Deployment, env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = deployment_sqlite.user("modfn")
    monkeypatch.setenv("LMVP_SERVER", deployment_sqlite.url)
    monkeypatch.setenv("LMVP_TOKEN", user.token or "")
    project = lmvp.default_client().create_project("mod-" + os.urandom(3).hex()).name
    f = env / "w.bin"
    f.write_bytes(b"module level")
    version = lmvp.update(f"{project}/m", f, message="via lmvp.update")
    assert lmvp.download(f"{project}/m").read_bytes() == b"module level"
    assert lmvp.showHistory is lmvp.show_history
    assert [v.number for v in lmvp.show_history(f"{project}/m", file=io.StringIO())] == [
        version.number
    ]


def test_clear_errors(deployment_sqlite: Deployment, client: lmvp.Client, env: Path) -> None:
    project = client.create_project("errors-" + os.urandom(3).hex()).name
    with pytest.raises(lmvp.NotFound, match="not found"):
        client.download(f"{project}/no-such-model")
    with pytest.raises(lmvp.InvalidRef, match="project/model"):
        client.download("not a ref")

    outsider = deployment_sqlite.user("outsider")
    viewer = deployment_sqlite.user("viewer")
    client.set_member(project, viewer.username, "viewer")  # type: ignore[attr-defined]
    f = env / "w.bin"
    f.write_bytes(b"x")
    with (
        lmvp.Client(deployment_sqlite.url, viewer.token) as as_viewer,
        pytest.raises(lmvp.PermissionDenied, match="contributor"),
    ):
        as_viewer.update(f"{project}/m", f)
    with (
        lmvp.Client(deployment_sqlite.url, outsider.token) as as_outsider,
        pytest.raises(lmvp.NotFound),
    ):
        as_outsider.update(f"{project}/m", f)
    with (
        lmvp.Client(deployment_sqlite.url, "lmvp_" + "x" * 40) as bad,
        pytest.raises(lmvp.AuthenticationError, match="lmvp login"),
    ):
        bad.projects()
    with (
        lmvp.Client(f"http://127.0.0.1:{free_port()}", "lmvp_" + "x" * 40, retries=2) as down,
        pytest.raises(lmvp.ServerUnavailable, match="running"),
    ):
        down.projects()


def test_a_server_url_ending_in_the_api_prefix_is_the_server(
    deployment_sqlite: Deployment, env: Path
) -> None:
    name = deployment_sqlite.account("apiprefix")
    client = lmvp.Client.login(f"{deployment_sqlite.url}/api/v1", name, "password-" + name)
    with client, lmvp.Client(f"{deployment_sqlite.url}/api/v1/", client.http.token) as again:
        assert client.server == again.server == deployment_sqlite.url
        assert again.whoami().username == name


def test_offline_download_serves_from_the_cache(client: lmvp.Client, env: Path) -> None:
    project = client.create_project("offline-" + os.urandom(3).hex()).name
    f = env / "w.bin"
    f.write_bytes(b"cached bytes")
    client.update(f"{project}/m", f, aliases=["prod"])
    with pytest.raises(lmvp.NotCached):
        client.download(f"{project}/m", offline=True)
    online = client.download(f"{project}/m@prod")
    assert client.download(f"{project}/m@prod", offline=True) == online
    assert client.download(f"{project}/m:1", offline=True).read_bytes() == b"cached bytes"


def test_login_token_goes_to_the_keyring_when_there_is_one(env: Path) -> None:
    import keyring

    previous = keyring.get_keyring()
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    try:
        where = credentials.save_login("http://example.invalid:8470", "lmvp_secret_token_123456")
        assert where == "the system keyring"
        assert memory.passwords == {
            ("lmvp", "http://example.invalid:8470"): "lmvp_secret_token_123456"
        }
        assert not (env / "config" / "tokens.json").exists()
        assert credentials.resolve_server() == "http://example.invalid:8470"
        assert (
            credentials.resolve_token("http://example.invalid:8470") == "lmvp_secret_token_123456"
        )
        assert credentials.forget_login("http://example.invalid:8470")
        assert memory.passwords == {}
    finally:
        keyring.set_keyring(previous)


def test_login_token_falls_back_to_a_private_file_without_a_keyring(
    env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import keyring
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        where = credentials.save_login("http://example.invalid:8470", "lmvp_file_token_123456")
        path = Path(where)
        assert path == env / "config" / "tokens.json"
        assert path.stat().st_mode & 0o777 == 0o600
        assert "no system keyring" in caplog.text
        assert credentials.resolve_token("http://example.invalid:8470") == "lmvp_file_token_123456"
        os.environ["LMVP_TOKEN"] = "lmvp_env_token_wins_123456"
        try:
            assert credentials.resolve_token("http://example.invalid:8470") == (
                "lmvp_env_token_wins_123456"
            )
        finally:
            del os.environ["LMVP_TOKEN"]
        assert credentials.forget_login("http://example.invalid:8470")
        assert credentials.resolve_token("http://example.invalid:8470") is None
    finally:
        keyring.set_keyring(previous)


def test_a_cached_file_edited_in_place_is_fetched_again(client: lmvp.Client, env: Path) -> None:
    project = client.create_project("corrupt-" + os.urandom(3).hex()).name
    f = env / "w.bin"
    original = os.urandom(50_000)
    f.write_bytes(original)
    client.update(f"{project}/m", f)
    path = client.download(f"{project}/m")
    assert path.read_bytes() == original

    # Same size, one byte flipped: what an in-place edit or a bad disk does.
    with path.open("r+b") as damaged:
        damaged.seek(1234)
        byte = damaged.read(1)
        damaged.seek(1234)
        damaged.write(bytes([byte[0] ^ 0xFF]))
    assert path.read_bytes() != original

    # The snapshot is a hard link to the cached blob, so the cache itself was damaged: only a
    # fresh fetch can give the original bytes back.
    again = client.download(f"{project}/m")
    assert again.read_bytes() == original


def test_events_iterator_replays_and_follows(client: lmvp.Client, env: Path) -> None:
    project = client.create_project("events-" + os.urandom(3).hex()).name
    start = client.history(project)[0].id  # project.created
    f = env / "w.bin"
    f.write_bytes(b"first")
    client.update(f"{project}/m", f, message="one")

    stream = client.events(since=start)
    kinds = []
    for event in stream:
        if event.project == project:
            kinds.append((event.kind, event.model, event.version))
        if event.kind == "version.created" and event.project == project:
            break
    assert kinds == [("model.created", "m", None), ("version.created", "m", 1)]

    f.write_bytes(b"second")
    client.update(f"{project}/m", f, message="two")
    for event in stream:
        if event.project == project and event.kind == "version.created":
            assert (event.version, event.payload["message"]) == (2, "two")
            break
    stream.close()


def test_large_file_is_sent_while_hashed_and_its_hash_remembered(
    client: lmvp.Client, env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish, "SEND_WHILE_HASHING", 1024 * 1024)
    project = client.create_project("spec-" + os.urandom(3).hex()).name
    ckpt = env / "big.bin"
    ckpt.write_bytes(os.urandom(3_000_000))
    # A hash is remembered only for a file older than a timestamp tick (see lmvp.hashmemo).
    time.sleep(2.1)
    memo = HashMemo(env / "cache" / "hashes.sqlite3")
    sent: list[int] = []

    first = client.update(f"{project}/m", ckpt, progress=sent.append)

    assert sum(sent) == 3_000_000
    assert first.files[0].sha256 == _sha(ckpt)
    assert memo.lookup(ckpt, ckpt.stat()) == _sha(ckpt)
    sent.clear()
    second = client.update(f"{project}/m", ckpt, progress=sent.append)
    assert sum(sent) == 0 and second.files[0].sha256 == first.files[0].sha256

    with ckpt.open("r+b") as f:  # same size, new bytes: the remembered hash no longer applies
        f.write(b"changed")
    assert memo.lookup(ckpt, ckpt.stat()) is None
    third = client.update(f"{project}/m", ckpt)
    assert third.files[0].sha256 == _sha(ckpt) != first.files[0].sha256
    assert client.download(f"{project}/m").read_bytes() == ckpt.read_bytes()
    memo.close()


def test_hash_memo_forgets_racy_files_and_never_fails_the_caller(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"just written")
    memo = HashMemo(tmp_path / "memo.sqlite3")
    memo.remember(fresh, fresh.stat(), "a" * 64, time.time_ns())
    assert memo.lookup(fresh, fresh.stat()) is None  # could still change within its mtime tick
    memo.remember(fresh, fresh.stat(), "a" * 64, time.time_ns() + 3_000_000_000)
    assert memo.lookup(fresh, fresh.stat()) == "a" * 64
    memo.close()

    (tmp_path / "not-a-db").mkdir()
    broken = HashMemo(tmp_path / "not-a-db")
    assert broken.lookup(fresh, fresh.stat()) is None
    broken.remember(fresh, fresh.stat(), "a" * 64, time.time_ns() + 3_000_000_000)
