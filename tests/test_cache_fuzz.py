"""Seeded corruptions of a tiny model's cache: each ends in our CacheError naming the file (or a
correct answer when the damage is harmless); never a foreign exception, a hang, a wrong
document, or a deletion outside the cache root."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import warnings
from pathlib import Path

import pytest
import torch

from actqkv_llm import CacheError, Engine
from actqkv_llm.persist import DocumentCache
from actqkv_llm.files import paths as paths_mod
from actqkv_llm.persist.format import BLOCKS, MANIFEST, STATE
from tiny_models import byte_tokenizer, tiny_model

N_CASES = 240
DOC_A = " ".join(f"Line {i}: the keeper counts {i * 7} gulls on the quay." for i in range(8))
DOC_B = DOC_A.replace("gulls", "crabs")
Q = "How many gulls?"
FILES = (MANIFEST, STATE, BLOCKS)
HOSTILE = [-1, 0, 1, 2 ** 70, 1e308, "x", "", None, True, [], {}, [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]],
           "../../victim", "/dev/zero", {"path": "../../victim"}, "bfloat16", "float64", "actqkv-document"]


class Hang(Exception):
    pass


def _denying_open(real, denied: set[str]):
    """os.open refusing the paths in ``denied`` with EACCES (root reads mode-0 files anyway)."""
    def open_(path, flags, *args, **kwargs):
        if os.fspath(path) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, flags, *args, **kwargs)
    return open_


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A pristine cache root holding documents A and B, the engine, and A's reference answer."""
    base = tmp_path_factory.mktemp("fuzz")
    eng = Engine(tiny_model(), byte_tokenizer(), progress=False, cache=False)
    cache = DocumentCache(base / "pristine")
    a, b = eng.prefill(DOC_A), eng.prefill(DOC_B)
    cache.put(a)
    cache.put(b)
    cache.close()
    reference = eng.ask(cache.load(eng, a.key), Q, max_new_tokens=3)
    return {"base": base, "eng": eng, "a": a.key, "b": b.key, "ids": a.token_ids, "reference": reference}


def corrupt(rng: random.Random, root: Path, da: Path, db: Path, victim: Path, denied: set[str]) -> str:
    """Apply one random corruption to the copy of the cache at ``root``; returns its description."""
    kind = rng.choice(["truncate", "flip", "field", "swap", "swap_all", "symlink_file", "fifo", "unreadable",
                       "nested", "symlink_dir", "index_row", "index_garbage", "devzero", "huge", "dir",
                       "state_rewrite"])
    name = rng.choice(FILES)
    f = da / name
    if kind == "truncate":
        data = f.read_bytes()
        f.write_bytes(data[: rng.randrange(len(data))])
    elif kind == "flip":
        data = bytearray(f.read_bytes())
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        f.write_bytes(bytes(data))
    elif kind == "field":
        m = json.loads((da / MANIFEST).read_text())
        path = rng.choice([[k] for k in m] + [["files", STATE, "bytes"], ["files", BLOCKS, "sha256"],
                                              ["fingerprint", "model_id"], ["kv_options", "block_size"],
                                              ["n_blocks", 0]])
        target = m
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = rng.choice(HOSTILE)
        (da / MANIFEST).write_text(json.dumps(m))
        name = f"{MANIFEST}:{'.'.join(map(str, path))}"
    elif kind == "swap":
        shutil.copyfile(db / name, f)
    elif kind == "swap_all":
        for n in FILES:
            shutil.copyfile(db / n, da / n)
    elif kind == "symlink_file":
        f.unlink()
        os.symlink(rng.choice([db / name, victim / "sub" / "file", Path("/etc/hostname")]), f)
    elif kind == "fifo":
        f.unlink()
        os.mkfifo(f)
    elif kind == "unreadable":
        os.chmod(f, 0)
        denied.add(str(f))  # root reads mode-0 files anyway: the test also denies it at os.open
    elif kind == "nested":
        depth = rng.choice([50, 5000, 200000])
        f = da / MANIFEST
        name = MANIFEST
        f.write_text(rng.choice(["[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth]))
    elif kind == "symlink_dir":
        shutil.rmtree(da)
        os.symlink(rng.choice([db, victim]), da)
    elif kind == "index_row":
        con = sqlite3.connect(root / "document-index" / "cache.db")
        choice = rng.randrange(3)
        if choice == 0:
            con.execute("UPDATE Cache SET filename = ?, mode = 2", (os.path.relpath(victim / "sub" / "file",
                                                                                   root / "document-index"),))
        elif choice == 1:
            import zlib
            con.execute("UPDATE Cache SET value = ?", (zlib.compress(json.dumps(
                {"path": os.path.relpath(victim, root / "documents"), "size": 1}).encode()),))
        else:
            import pickle
            con.execute("UPDATE Cache SET mode = 4, value = ?", (pickle.dumps({"path": str(victim)}),))
        con.commit()
        con.close()
        name = "document-index"
    elif kind == "index_garbage":
        db_file = root / "document-index" / "cache.db"
        db_file.write_bytes(os.urandom(rng.choice([0, 100, 4096])))
        name = "document-index"
    elif kind == "devzero":
        f.unlink()
        os.symlink("/dev/zero", f)
    elif kind == "huge":
        f.write_bytes(b"{" + b" " * rng.choice([2 << 20, 10]) + b"}")
    elif kind == "dir":
        f.unlink()
        f.mkdir()
    elif kind == "state_rewrite":
        name = rewrite_state(rng, da)
    return f"{kind} {name}"


def rewrite_state(rng: random.Random, da: Path) -> str:
    """A structurally inconsistent state.safetensors whose size and sha256 the manifest agrees
    with (only an inconsistency checks beyond the checksum can catch): must be refused."""
    import hashlib

    from safetensors.torch import load, save

    tensors = load((da / STATE).read_bytes())
    name = rng.choice(sorted(tensors))
    t = tensors[name]
    how = rng.choice(["drop", "empty", "dtype", "dim", "scalar"])
    if how == "drop" or (how == "scalar" and t.numel() != 1):
        if name == "text" or name.endswith("question"):
            how, name = "drop", "token_ids"
        del tensors[name]
    elif how == "empty":
        tensors[name] = t.flatten()[:0].clone()
    elif how == "dtype":
        tensors[name] = t.to(torch.float64 if not t.is_floating_point() or t.dtype != torch.float64
                              else torch.int32)
    elif how == "dim":
        tensors[name] = t.unsqueeze(0).repeat(2, *([1] * t.dim())).clone()
    else:
        tensors[name] = torch.tensor([rng.choice([-5, 2 ** 40, float("nan")])]).to(t.dtype)
    data = save(tensors)
    (da / STATE).write_bytes(data)
    m = json.loads((da / MANIFEST).read_text())
    m["files"][STATE] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (da / MANIFEST).write_text(json.dumps(m))
    return f"{STATE}:{name}:{how}"


def snapshot(victim: Path) -> dict:
    return {str(p.relative_to(victim)): p.read_bytes() for p in victim.rglob("*") if p.is_file()}


def test_seeded_corruptions(world, tmp_path, monkeypatch):
    denied: set[str] = set()
    monkeypatch.setattr(paths_mod.os, "open", _denying_open(os.open, denied))
    eng, key_a, reference = world["eng"], world["a"], world["reference"]
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "file").write_text("precious")
    before = snapshot(victim)
    outcomes: dict[str, int] = {}
    kinds: dict[str, set] = {}

    def on_alarm(signum, frame):
        raise Hang()

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        for seed in range(N_CASES):
            rng = random.Random(seed)
            denied.clear()
            root = tmp_path / f"case-{seed}"
            shutil.copytree(world["base"] / "pristine", root, symlinks=True)
            da, db = root / "documents" / key_a, root / "documents" / world["b"]
            what = corrupt(rng, root, da, db, victim, denied)
            signal.alarm(20)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cache = DocumentCache(root)
                    try:
                        via = rng.choice(["load", "lookup"])
                        if via == "load":
                            doc = cache.load(eng, key_a)
                        else:
                            doc = cache.lookup(eng, DOC_A, "chat", world["ids"])
                        if doc is not None:
                            assert doc.text == DOC_A and doc.key == key_a, f"seed {seed} ({what}): wrong document"
                            assert not what.startswith("state_rewrite"), f"seed {seed} ({what}): accepted"
                            answer = eng.ask(doc, Q, max_new_tokens=3)
                            assert answer == reference, f"seed {seed} ({what}): wrong answer {answer!r}"
                            outcome = "answered"
                        else:
                            outcome = "not used"
                    except CacheError as exc:
                        msg = str(exc)
                        if denied:
                            assert "permission denied" in msg, f"seed {seed} ({what}): {msg}"
                        assert str(root) in msg or key_a[:12] in msg, f"seed {seed} ({what}): {msg}"
                        outcome = "CacheError"
                    finally:
                        cache.close()
            except Hang:
                pytest.fail(f"seed {seed} ({what}): hung")
            except (AssertionError, pytest.fail.Exception):
                raise
            except Exception as exc:  # noqa: BLE001 - the point of the test
                pytest.fail(f"seed {seed} ({what}): foreign exception {type(exc).__name__}: {exc}")
            finally:
                signal.alarm(0)
            assert snapshot(victim) == before, f"seed {seed} ({what}): something outside the root changed"
            if denied:  # unreadable is not damaged: never deleted
                assert all(os.path.lexists(p) for p in denied), f"seed {seed} ({what}): deleted"
            assert (world["base"] / "pristine" / "documents" / key_a / MANIFEST).is_file()
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            kinds[what.split()[0]] = kinds.get(what.split()[0], set()) | {outcome}
            for p in root.rglob("*"):  # so the next copy and tmp cleanup can proceed
                if not p.is_symlink() and p.is_file():
                    os.chmod(p, 0o600)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert sum(outcomes.values()) == N_CASES >= 200
    assert outcomes.get("CacheError", 0) + outcomes.get("not used", 0) > N_CASES // 3, outcomes
    print(outcomes, kinds)
    assert len(kinds) == 16  # every kind of corruption was drawn
