"""bucketio.py, the node's object client, with a fake store (the unit under test is the path rule and the
all-or-nothing placement; the real stores are exercised against moto and Azurite in tests/integration)."""

from __future__ import annotations

import importlib.util
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import ModuleType

import pytest

from mpicloud.assets import provision_dir
from mpicloud.protocol.objects import StoreError
from mpicloud.protocol.paths import UnsafePath, check_name

HOSTILE = ["a//b", "../x", "x/../../y", "/etc/x", "C:/x", "c:x", "x\\y", "..\\..\\x", "x/.", "con.txt", "x/aux",
           "a/b:c", "x/ ", "\\\\server\\share\\x"]


def _bucketio() -> ModuleType:
    spec = importlib.util.spec_from_file_location("node_bucketio", provision_dir() / "runner" / "bucketio.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeStore:
    """Objects in memory; records what was downloaded."""

    def __init__(self, objects: dict[str, bytes], short: frozenset[str] = frozenset()) -> None:
        self.objects, self.short = objects, short
        self.fetched: list[str] = []

    def list(self, prefix: str) -> list[tuple[str, int]]:
        return [(k, len(v)) for k, v in sorted(self.objects.items()) if k.startswith(prefix)]

    def size(self, key: str) -> int:
        return len(self.objects[key])

    def download(self, key: str, dest: Path) -> None:
        self.fetched.append(key)
        data = self.objects[key]
        dest.write_bytes(data[: len(data) // 2] if key in self.short else data)

    def upload(self, path: Path, key: str) -> None:
        self.objects[key] = path.read_bytes()


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_key_refuses_the_whole_get_before_any_byte(name: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    bucketio = _bucketio()
    store = FakeStore({"input/case/aaa.txt": b"fine", f"input/case/{name}": b"pwned"})
    monkeypatch.setattr(bucketio, "open_store", lambda url: store)
    with pytest.raises(StoreError, match="refusing object key"):
        bucketio.get("s3://bkt/input/case/", tmp_path / "dest")
    assert store.fetched == [] and not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("name", HOSTILE)
def test_the_path_rule_refuses_the_same_names_for_both_path_flavours(name: str) -> None:
    with pytest.raises(UnsafePath):
        check_name(name)


@pytest.mark.parametrize("name", ["a/b.txt", "run 7/a+b c.txt", "deep/er/x.h5", "x..y", ".hidden"])
def test_accepted_names_stay_inside_on_posix_and_windows(name: str) -> None:
    parts = check_name(name).parts
    for base in (PurePosixPath("/work/dest"), PureWindowsPath("C:/work/dest")):
        joined = base.joinpath(*parts)
        assert joined.is_relative_to(base) and ".." not in joined.parts


def test_a_short_object_is_never_renamed_into_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucketio = _bucketio()
    store = FakeStore({"input/a.bin": b"x" * 100, "input/b.bin": b"y" * 10}, short=frozenset({"input/a.bin"}))
    monkeypatch.setattr(bucketio, "open_store", lambda url: store)
    with pytest.raises(StoreError, match=r"1 of 2 object.*50 of 100 bytes"):
        bucketio.get("az://acct/runs/input/", tmp_path)
    assert sorted(p.name for p in (tmp_path / "input").iterdir()) == ["b.bin"]


def test_put_sends_only_new_or_changed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucketio = _bucketio()
    store = FakeStore({})
    monkeypatch.setattr(bucketio, "open_store", lambda url: store)
    (tmp_path / "in.dat").write_bytes(b"input")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "out.dat").write_bytes(b"output")
    st = (tmp_path / "in.dat").stat()
    assert bucketio.put(tmp_path, "s3://bkt/output/run", {"in.dat": [st.st_size, st.st_mtime_ns]}) == 1
    assert store.objects == {"output/run/sub/out.dat": b"output"}
