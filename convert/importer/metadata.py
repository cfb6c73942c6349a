"""Reading a GGUF for import: typed access to its metadata and tensor table, on top of convert.gguf_reader (the
one GGUF reader), and the `general.*` keys turned back into a model card (the inverse of convert.metadata)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from convert.gguf_reader import GGUFFile, TensorEntry
from convert.common.errors import EdgeftError

_REQUIRED = object()


class GGUFMetadata:
    """`get(key)` for scalars and strings, `array(key)` for lists; keys may hold `{arch}` (gguf.Keys.LLM.*)."""

    def __init__(self, source: GGUFFile):
        self.source = source
        self.path = source.path
        self.arch = source.arch
        if not isinstance(self.arch, str):
            raise EdgeftError(f"{self.path}: no general.architecture; not a model GGUF (an imatrix?)")
        if source.value(gguf.Keys.General.TYPE) == gguf.GGUFType.ADAPTER:
            raise EdgeftError(f"{self.path}: a LoRA adapter GGUF, not a model; import the base model's GGUF instead")
        self.tensors: dict[str, TensorEntry] = {t.name: t for t in source.tensors}

    def _key(self, key: str) -> str:
        return key.format(arch=self.arch)

    def get(self, key: str, default=_REQUIRED):
        value = self.source.value(self._key(key), None)
        if isinstance(value, float) and self.source.kv[self._key(key)].value_type == gguf.GGUFValueType.FLOAT32:
            value = float(str(np.float32(value)))  # 1e-05, not 9.999999747378752e-06: the shortest float32 text
        if value is None:
            if default is _REQUIRED:
                raise EdgeftError(f"{self.path}: metadata {self._key(key)} is missing; the GGUF is incomplete")
            return default
        return value

    def array(self, key: str, default=_REQUIRED) -> list:
        values = self.source.array(self._key(key), None)
        if values is None:
            if default is _REQUIRED:
                raise EdgeftError(f"{self.path}: metadata {self._key(key)} is missing; the GGUF is incomplete")
            return default
        return values

    def has_tensor(self, name: str) -> bool:
        return name in self.tensors

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        """numpy / HF order (GGUF lists the contiguous dimension first)."""
        if name not in self.tensors:
            raise EdgeftError(f"{self.path}: tensor {name} is missing; the GGUF is incomplete")
        return self.tensors[name].shape

    def read_rows(self, name: str, rows: int | None = None) -> np.ndarray:
        """The first `rows` rows (all when None) as float32 (rows, width), dequantized whatever the type."""
        return self.source.dequantize(self.tensors[name], rows)

    def read_tensor(self, name: str) -> np.ndarray:
        """The tensor as float32 in numpy order, dequantized by the gguf package whatever its type."""
        return self.read_rows(name).reshape(self.tensor_shape(name))


def model_card(meta: GGUFMetadata, *, source_name: str, dtype: str) -> str:
    """README.md whose front matter convert.metadata.write_general reads back (license, base_model, language)."""
    import yaml

    keys = gguf.Keys.General
    front: dict = {}
    if meta.get(keys.LICENSE, None):
        front["license"] = meta.get(keys.LICENSE)
    bases = []
    for index in range(int(meta.get(keys.BASE_MODEL_COUNT, 0))):
        name = meta.get(keys.BASE_MODEL_NAME.format(id=index), None)
        org = meta.get(keys.BASE_MODEL_ORGANIZATION.format(id=index), None)
        if name:
            bases.append(f"{org}/{name}" if org else name)
    if bases:
        front["base_model"] = bases
    if meta.array(keys.LANGUAGES, []):
        front["language"] = meta.array(keys.LANGUAGES)
    types = sorted({t.qtype.name for t in meta.tensors.values()})
    title = meta.get(keys.NAME, None) or Path(source_name).stem
    body = (f"# {title}\n\nImported from `{source_name}` ({', '.join(types)} tensors) by `edgeft import`: weights "
            f"dequantized to {dtype}, tokenizer rebuilt from the GGUF's vocabulary.\n")
    return (f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n" if front else "") + body
