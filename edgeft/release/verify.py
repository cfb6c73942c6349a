"""Verify a published release: every file against manifest.json, the manifest against the digests recorded of it
(the card's line, the NAME.sha256 beside the folder, a digest the user passes), the card against the manifest's
figures, and the verdict against the gates.

What each check catches: a swapped or damaged file (its sha256); an edited manifest, whether its metrics, gates,
verdict or file list (its sha256 is no longer the one the card and the sidecar record); an edited card (it no longer
renders from the manifest); a manifest edited together with the card's digest line (the card no longer renders from
it); a gate row or verdict that contradicts its own value and threshold. A forger who re-renders the card with this
code defeats every check inside the folder: only a digest kept outside it (the sidecar on the publisher's disk, one
the publisher announced, passed with --digest) catches that, and the success line says which digest was checked.

Example:
    problems = verify_release(Path("release/edgeft-demo"), digest="9f2c...")
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from convert.common.errors import EdgeftError
from edgeft.identity import file_sha256
from edgeft.release.card import DIGEST_LINE, recorded_digest
from edgeft.release.publish import CARD, MANIFEST_VERSION, digest_sidecar, gguf_file_name


def read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.is_file():
        raise EdgeftError(f"{folder}: no manifest.json, so this is not a published release (or it was cut short); "
                          "pass a folder made by `make release` / `edgeft release`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise EdgeftError(f"{path}: damaged, not JSON ({exc}); do not ship this folder") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list) or not all(isinstance(e, dict) and {"path", "size", "sha256"} <= set(e)
                                              for e in files):
        raise EdgeftError(f"{path}: has no valid file list (files: [{{path, size, sha256}}, ...]); do not ship "
                          "this folder")
    return manifest


def verify_release(folder: Path, digest: str | None = None) -> list[str]:
    """Problems found in a published folder ([] means it is what was published); `digest`: the manifest's sha256
    as the publisher announced it."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = _file_problems(folder, manifest)
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        return problems + [f"manifest.json: version {manifest.get('manifest_version')!r} records no digest of itself, "
                           "so its figures and verdict cannot be checked; publish it again with this edgeft "
                           "(make release)"]
    actual = _text_sha256(folder / "manifest.json")
    for where, expected in _recorded_digests(folder, digest).items():
        if expected is None:
            problems.append(f"{where}: records no manifest sha256 (a line `{DIGEST_LINE.format('...')}`)")
        elif expected != actual:
            problems.append(f"manifest.json: sha256 {actual[:16]}… is not the {_shown(expected[:16])}… {where} records: "
                            "the manifest (metrics, gates, verdict or file list) was changed after publishing")
    return problems + _card_problems(folder, manifest, actual) + _gate_problems(manifest)


def checked_against(folder: Path, digest: str | None = None) -> str:
    """For the success line: which digests of the manifest were compared, and what is left to the reader."""
    folder = Path(folder)
    outside = [where for where in _recorded_digests(folder, digest) if where != "the card"]
    actual = _text_sha256(folder / "manifest.json")
    if outside:
        return f"manifest sha256 {actual} matches {' and '.join(outside)}"
    return (f"manifest sha256 {actual} matches the card; no digest from outside the folder was checked: compare it "
            "with the one the publisher announced (--digest)")


def _recorded_digests(folder: Path, digest: str | None) -> dict[str, str | None]:
    """Where the manifest's sha256 is recorded -> that sha256 (None: the card records none)."""
    found = {}
    if digest is not None:
        found["--digest"] = digest.strip().lower()
    sidecar = digest_sidecar(folder)
    if sidecar.is_file():
        text = sidecar.read_text(encoding="utf-8", errors="replace").split()
        found[str(sidecar)] = text[0].lower() if text else ""
    card = folder / CARD
    if card.is_file():
        found["the card"] = recorded_digest(card.read_text(encoding="utf-8", errors="replace"))
    return found


def _card_problems(folder: Path, manifest: dict, actual: str) -> list[str]:
    from edgeft import __version__
    from edgeft.release.card import render_model_card

    card = folder / CARD
    if not card.is_file():
        return [f"{CARD}: missing; it is the model card, and it records the manifest's sha256"]
    try:
        expected = render_model_card(manifest, gguf_name=gguf_file_name(manifest["name"], manifest["quant"]),
                                     system_prompt=manifest.get("system_prompt"), digest=actual)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        return [f"manifest.json: cannot render the card from it ({type(exc).__name__}: {exc}); it was edited"]
    if _lf(card.read_bytes()) == expected.encode("utf-8"):
        return []
    made_by = (manifest.get("versions") or {}).get("edgeft")
    other = f" (made by edgeft {made_by}, this is {__version__}: verify with that version)" \
        if made_by != __version__ else ""
    return [f"{CARD}: is not the card manifest.json renders to: its figures, gates or text were edited, or the "
            f"manifest was{other}"]


def _gate_problems(manifest: dict) -> list[str]:
    """A gate row whose pass/fail does not follow from its value and threshold, and a verdict that does not follow
    from the gates (published releases passed every gate)."""
    from runtime.gates import GATES, decide

    gates = manifest.get("gates")
    if not isinstance(gates, list) or not all(isinstance(row, dict) for row in gates):
        return ["manifest.json: gates is not a list of gate rows"]
    problems = []
    for row in gates:
        name, value, threshold = row.get("gate"), row.get("value"), row.get("threshold")
        gate = GATES.get(name) if isinstance(name, str) else None
        if gate is None:
            problems.append(f"manifest.json: gate {_shown(str(name))}: unknown to this edgeft (known: "
                            f"{', '.join(GATES)})")
            continue
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                      for x in (value, threshold))
        n = row.get("n") if isinstance(row.get("n"), int) else None
        follows = numbers and decide(gate, value, threshold, n)[0]
        if bool(row.get("passed")) != follows:
            over = f" over {n} examples" if gate.min_examples else ""
            problems.append(f"manifest.json: gate {name}: value {value!r} {gate.symbol} {threshold!r}{over} is a "
                            f"{'pass' if follows else 'FAIL'}, but the row says {'pass' if row.get('passed') else 'FAIL'}")
    if manifest.get("verdict") != "pass":
        problems.append(f"manifest.json: verdict {str(manifest.get('verdict'))[:40]!r}, but a release is published "
                        "only when every gate passed")
    return problems


def _file_problems(folder: Path, manifest: dict) -> list[str]:
    problems = []
    seen = set()
    for entry in manifest["files"]:
        name = str(entry["path"])
        shown = _shown(name)
        if os.path.normpath(name) in seen:  # "a" and "./a" too: one file hashed twice, once with a stale entry
            problems.append(f"{shown}: listed more than once in the manifest")
            continue
        seen.add(os.path.normpath(name))
        path = folder / name
        try:
            if folder.resolve() not in path.resolve().parents:
                problems.append(f"{shown}: points outside the release folder")
            elif not path.is_file():
                problems.append(f"{shown}: missing")
            elif path.stat().st_size != entry["size"]:
                problems.append(f"{shown}: size {path.stat().st_size} != {entry['size']}")
            elif file_sha256(path) != entry["sha256"]:
                problems.append(f"{shown}: sha256 differs from the manifest")
        except (OSError, ValueError):  # NUL, a lone surrogate, a name too long: no file can be called that
            problems.append(f"{shown}: not a name a file can have; the manifest is damaged")
    # The card is not listed: it records the manifest's digest, and is checked by rendering it again.
    extra = _present(folder) - seen - {"manifest.json", CARD}
    problems.extend(f"{_shown(name)}: not listed in the manifest" for name in sorted(extra))
    return problems


def _present(folder: Path) -> set[str]:
    """Every file in the folder and its subfolders (the peft adapter is one), and every empty subfolder."""
    found = set()
    for root, dirs, files in os.walk(folder):  # symbolic links to folders are listed, not followed
        where = os.path.relpath(root, folder)
        names = files + [d for d in dirs if os.path.islink(os.path.join(root, d))]
        found.update(os.path.normpath(os.path.join(where, name)) for name in names)
        if where != "." and not files and not dirs:
            found.add(where)
    return found


def _lf(data: bytes) -> bytes:
    # A copy checked out by git on Windows (autocrlf) has CRLF line ends in the manifest and the card: the same text.
    return data.replace(b"\r\n", b"\n")


def _text_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(_lf(path.read_bytes())).hexdigest()


def _shown(name: str) -> str:
    # A hostile manifest's or folder's name (NUL, undecodable bytes, 5,000 characters) printed readably, one line.
    return ascii(name)[:200] if len(name) > 200 or not name.isprintable() else name
