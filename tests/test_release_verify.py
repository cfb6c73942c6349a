"""`release verify` against a tampered release: the manifest's metrics, verdict, gates or file list edited, the card
edited, both edited to agree; each is found, and the success line says which digest of the manifest was checked."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from edgeft.release.card import recorded_digest, render_model_card
from edgeft.release.publish import publish_release
from edgeft.release.verify import verify_release
from tests.hostile import error_line, invoke
from tests.test_release import PASSING, inputs  # noqa: F401 (the fixture)


@pytest.fixture
def folder(tmp_path, inputs):  # noqa: F811
    return publish_release("demo", tmp_path / "release", gates=PASSING, **inputs)


def _edit(folder, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_card_and_the_sidecar_record_the_manifest_digest(folder):
    digest = _sha256(folder / "manifest.json")  # what `sha256sum manifest.json` prints
    card = (folder / "README.md").read_text()
    assert recorded_digest(card) == digest and f"edgeft release verify . --digest {digest}" in card
    assert (folder.parent / "demo.sha256").read_text() == f"{digest}  demo/manifest.json\n"
    assert verify_release(folder) == []
    result = invoke("release", "verify", folder)
    assert result.exit_code == 0 and f"manifest sha256 {digest} matches {folder.parent / 'demo.sha256'}" in result.output
    result = invoke("release", "verify", folder, "--digest", digest.upper())
    assert result.exit_code == 0 and "matches --digest" in result.output


def _metrics(m):
    m["metrics"]["task"]["finetune"] = 0.99


def _verdict(m):
    m["verdict"] = "fail"


def _gate_threshold(m):
    m["gates"][0]["threshold"] = 60.0  # value 55 no longer passes, the row still says pass


def _file_list(m):
    m["files"] = [e for e in m["files"] if e["path"] != "Modelfile"]


TAMPERED = [
    (_metrics, ["the card records: the manifest (metrics, gates, verdict or file list) was changed",
                "README.md: is not the card manifest.json renders to"]),
    (_verdict, ["the card records", "verdict 'fail', but a release is published only when every gate passed"]),
    (_gate_threshold, ["the card records", "gate min_gain: value 55.0 >= 60.0 is a FAIL, but the row says pass"]),
    (_file_list, ["the card records", "Modelfile: not listed in the manifest"]),
]


@pytest.mark.parametrize("change, needles", TAMPERED, ids=[c.__name__.strip("_") for c, _ in TAMPERED])
def test_an_edited_manifest_is_found(folder, change, needles):
    _edit(folder, change)
    problems = "\n".join(verify_release(folder))
    for needle in needles:
        assert needle in problems
    assert "demo.sha256 records" in problems  # the sidecar beside the folder disagrees too
    error_line(invoke("release", "verify", folder), "differ from manifest.json; do not ship this folder")


def test_a_swapped_gguf_with_its_entry_rewritten_is_found(folder):
    gguf = folder / "demo-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF another model")

    def rehash(m):
        entry = next(e for e in m["files"] if e["path"] == gguf.name)
        entry.update(size=gguf.stat().st_size, sha256=_sha256(gguf))

    _edit(folder, rehash)
    problems = verify_release(folder)
    assert not any(p.startswith(gguf.name) for p in problems)  # the file list itself now agrees with the file
    assert any("the card records" in p for p in problems)


def test_an_edited_card_is_found(folder):
    card = folder / "README.md"
    card.write_text(card.read_text().replace("| this fine-tune (Q4_K_M) | 60.0% |", "| this fine-tune (Q4_K_M) | 90.0% |"))
    assert verify_release(folder) == ["README.md: is not the card manifest.json renders to: its figures, gates or "
                                      "text were edited, or the manifest was"]


def test_manifest_and_card_digest_line_edited_together_is_found(folder):
    _edit(folder, _metrics)
    card = folder / "README.md"
    old = recorded_digest(card.read_text())
    card.write_text(card.read_text().replace(old, _sha256(folder / "manifest.json")))
    problems = verify_release(folder)
    assert problems[0].startswith("manifest.json: sha256") and "demo.sha256 records" in problems[0]
    assert problems[1].startswith("README.md: is not the card manifest.json renders to")


def test_a_forgery_rendered_with_our_code_needs_a_digest_from_outside(folder, tmp_path):
    """Manifest edited and the card rendered again from it: nothing inside the folder can tell. The sidecar the
    publisher kept, or the digest they announced, does; a copy checked without one says nothing outside was
    checked."""
    announced = _sha256(folder / "manifest.json")
    _edit(folder, _metrics)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "README.md").write_text(render_model_card(manifest, gguf_name="demo-Q4_K_M.gguf",
                                                        system_prompt=manifest["system_prompt"],
                                                        digest=_sha256(folder / "manifest.json")))
    assert [p for p in verify_release(folder) if "demo.sha256 records" in p]
    copy = tmp_path / "downloaded" / "demo"
    shutil.copytree(folder, copy)
    result = invoke("release", "verify", copy)
    assert result.exit_code == 0 and "no digest from outside the folder was checked" in result.output
    error_line(invoke("release", "verify", copy, "--digest", announced), "do not ship this folder")
    assert "--digest records" in invoke("release", "verify", copy, "--digest", announced).output


def test_a_missing_card_and_a_card_without_digest(folder):
    card = folder / "README.md"
    text = card.read_text()
    card.write_text(text.replace(f"manifest.json sha256: `{recorded_digest(text)}`", ""))
    assert "the card: records no manifest sha256" in "\n".join(verify_release(folder))
    card.unlink()
    assert "README.md: missing; it is the model card" in "\n".join(verify_release(folder))


def test_a_manifest_from_before_the_digest_is_not_called_intact(folder):
    (folder.parent / "demo.sha256").unlink()
    (folder / "README.md").unlink()
    _edit(folder, lambda m: m.update(manifest_version=1))
    assert verify_release(folder) == ["manifest.json: version 1 records no digest of itself, so its figures and "
                                      "verdict cannot be checked; publish it again with this edgeft (make release)"]


def test_line_ends_converted_by_a_windows_checkout_are_not_tampering(folder):
    for name in ("manifest.json", "README.md"):
        path = folder / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert verify_release(folder) == []
    _edit(folder, _metrics)  # a real edit in a CRLF copy is still one
    assert any("the card records" in p for p in verify_release(folder))
