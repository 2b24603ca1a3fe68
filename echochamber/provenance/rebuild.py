"""The document map of a shards folder built before maps existed, recovered from its mixture spec.

Rebuilding builds the whole mixture again into a scratch folder (the same spec gives byte-identical
shards) and keeps its map only after checking that its train.bin equals the folder's byte for byte.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echochamber.config import from_dict, read_yaml
from echochamber.data.docmap import DOC_MAP_DIR, DocumentMap, load_document_map
from echochamber.errors import UserError

if TYPE_CHECKING:
    from echochamber.data.mixture import MixtureConfig


def ensure_document_map(
    shards_dir: Path,
    manifest: dict[str, Any],
    spec: MixtureConfig | Path | None,
    say: Callable[[str], None] | None = None,
) -> DocumentMap:
    """The folder's document map; for a folder built before maps existed, rebuild it from `spec` (a
    mixture config, or a study run's config.yaml, read only when the map is missing).

    Rebuilding builds the whole mixture again into a scratch folder (the same spec gives
    byte-identical shards) and keeps its map only after checking that its train.bin equals this one
    byte for byte. Without a matching spec there is no honest way back: a one-line error says how
    to rebuild the shards.
    """
    shards_dir = Path(shards_dir)
    if (shards_dir / DOC_MAP_DIR).is_dir():
        return load_document_map(shards_dir, manifest)
    from echochamber.data.mixture import MixtureConfig, build_shards, spec_hash

    if isinstance(spec, Path):  # a study run's resolved config.yaml: its mixture section is the spec
        spec = from_dict(MixtureConfig, read_yaml(spec).get("mixture"), prefix="mixture.")
    if spec is None or spec_hash(spec) != manifest.get("spec_hash"):
        why = (
            "no mixture spec is known for it (a study run folder has one in config.yaml)"
            if spec is None
            else f"the spec at hand builds other shards (spec hash {spec_hash(spec)}, not {manifest.get('spec_hash')})"
        )
        raise UserError(
            f"{shards_dir} has no document map (built before provenance existed) and {why}; rebuild it "
            f"with `echochamber data mixture SPEC --out NEW_DIR` and trace against NEW_DIR"
        )
    scratch = shards_dir.parent / f".{shards_dir.name}.docmap-{uuid.uuid4().hex[:8]}"
    if say is not None:
        say(f"{shards_dir} predates document maps: rebuilding its mixture once to recover the map")
    try:
        build_shards(spec, scratch, progress=False)
        if not _same_bytes(scratch / "train.bin", shards_dir / "train.bin"):
            raise UserError(
                f"rebuilding {shards_dir} from its spec gave a different train.bin (another echochamber "
                "version?); rebuild the shards with `echochamber data mixture SPEC --out NEW_DIR`"
            )
        os.replace(scratch / DOC_MAP_DIR, shards_dir / DOC_MAP_DIR)
    except OSError as exc:
        if (shards_dir / DOC_MAP_DIR).is_dir():  # another process put the same map there first
            return load_document_map(shards_dir, manifest)
        raise UserError(f"cannot write a document map into {shards_dir}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return load_document_map(shards_dir, manifest)


def _same_bytes(a: Path, b: Path, chunk: int = 1 << 24) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while block := fa.read(chunk):
            if block != fb.read(chunk):
                return False
    return True
