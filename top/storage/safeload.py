"""The one reader for every torch and safetensors file the project reads: nothing in a file runs.

* A torch zip archive (what ``torch.save`` writes since 1.6) is vetted by its member list before
  anything is unpickled: a TorchScript archive (``constants.pkl``, ``code/``, ...) or any other
  extra member is refused. Its ``data.pkl`` is then unpickled here, with the allow-list below,
  and its storages are read from the archive with ``zipfile`` (which checks every member's
  CRC-32), as torch's own ``weights_only`` loader does. ``torch.load`` never sees a zip, so
  ``torch.jit.load`` cannot be reached, on torch 1.12 as on torch 2.x.
* Anything else is torch's legacy (pre-1.6) format or a raw pickle; torch reads it with
  ``pickle_module`` set to the allow-list, which every pickle of that path goes through.
* The allow-list resolves only containers, tensor rebuilders, dtypes and numpy arrays; the
  authors' pickled ``models.l0_module.L0ModuleForMAC`` and the transformers config inside it
  map onto inert stand-ins when ``allow_gate_module`` is set. Everything else is refused by name
  before any object is built.

Also here: safetensors reading and writing, a model directory's weights, and a tree of tensors
and plain values stored as one safetensors file (its structure in the file's metadata).
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import inspect
import io
import json
import os
import pickle
import re
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from top.errors import UserError, brief, clip, error_detail
from top.storage.io import storage_failure
from top.storage.manifest import verify_manifest

PathLike = Union[str, Path]

WEIGHTS_FILE = "pytorch_model.bin"
SAFETENSORS_FILE = "model.safetensors"

_TORCH_HAS_WEIGHTS_ONLY = "weights_only" in inspect.signature(torch.load).parameters
_ZIP_MAGIC = b"PK\x03\x04"  # what torch.load itself checks to choose its zip path


# ----------------------------------------------------------------------------------------------
# The allow-list


class _PickledObject:
    """An inert holder for the attributes of a pickled object whose class is never imported."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ state)
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected object state of type {type(state).__name__}")
        self.__dict__["pickled_state"] = state


class PickledGateModule(_PickledObject):
    """Stands in for the original ``models.l0_module.L0ModuleForMAC`` / ``L0Module``."""

    # torch's legacy (pre-zip) format stores a module's source and compares it on load; the
    # comparison reads this flag and then only warns (we silence that warning).
    dump_patches = False


class PickledConfig(_PickledObject):
    """Stands in for a ``transformers`` config class pickled inside the gate module."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Pickle protocol 2 stores bytes as ``_codecs.encode(text, "latin1")``; nothing else is allowed.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 text")
    return text.encode("latin1")


class _StorageType:
    """What ``GLOBAL torch FloatStorage`` (and friends) resolve to in our zip reader: a dtype, not callable."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


# The storage classes torch.save names in a zip's data.pkl, by name (our own table: nothing is
# looked up on the torch module by a name taken from the file).
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}

_GATE_MODULES = ("models.l0_module",)
_GATE_CLASSES = ("L0ModuleForMAC", "L0Module")
_TORCH_REBUILDERS = (
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
)
_NUMPY_ALLOWED = {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
}


def _storage_elements(storage: Any) -> Optional[int]:
    """How many elements a typed storage holds (None when it is not one)."""
    for attribute in ("_size", "size"):  # torch 2.x's TypedStorage has _size(); torch 1.12's storages size()
        method = getattr(storage, attribute, None)
        if callable(method):
            try:
                return int(method())
            except Exception:  # noqa: BLE001 - not a storage after all
                return None
    return None


def check_tensor_layout(storage: Any, offset: Any, size: Any, stride: Any) -> None:
    """Refuse a tensor whose declared layout reaches past its storage or holds more elements than it.

    A stride-0 tensor of ``[1, 2**33]`` over a 4-byte storage is a valid view, but any copy of it
    (``.clone()``, ``.to()``) allocates 32 GiB: so no tensor read from a file may hold more elements
    than the bytes of its storage, which are bytes the file itself holds.
    """
    def whole(values: Any) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)

    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))) or len(size) != len(stride):
        raise pickle.UnpicklingError("a tensor with a malformed size or stride")
    if len(size) > 64 or not whole(size) or not whole(stride) or not whole([offset]):
        raise pickle.UnpicklingError("a tensor with a negative or non-integer size, stride or offset")
    available = _storage_elements(storage)
    if available is None:
        raise pickle.UnpicklingError("a tensor whose storage is not a storage")
    numel = 1
    for dim in size:
        numel *= dim
    if numel == 0:
        return
    last = offset + sum((dim - 1) * step for dim, step in zip(size, stride))
    if last >= available or numel > available:
        raise pickle.UnpicklingError(
            f"a tensor of shape {list(size)[:8]} (offset {offset}, stride {list(stride)[:8]}) that needs more than "
            f"the {available} elements its storage holds"
        )


def _checked_rebuilder(name: str) -> Any:
    rebuild = getattr(torch._utils, name, None)
    if rebuild is None or name == "_rebuild_parameter" or name == "_rebuild_parameter_with_state":
        return rebuild  # these wrap a tensor that was itself rebuilt (and checked) already

    def checked(storage: Any, storage_offset: Any, size: Any, stride: Any, *rest: Any) -> Any:
        check_tensor_layout(storage, storage_offset, tuple(size) if isinstance(size, torch.Size) else size, stride)
        return rebuild(storage, storage_offset, size, stride, *rest)

    return checked


def allowed_global(module: str, name: str, allow_gate_module: bool) -> Any:
    """The object a pickle may name as ``module.name``, or None if it is not on the allow-list."""
    if module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
        return {"set": set, "frozenset": frozenset}[name]
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if (module, name) == ("_codecs", "encode"):
        return _latin1_encode
    if module == "torch._utils" and name in _TORCH_REBUILDERS:
        return _checked_rebuilder(name)
    if module == "torch":
        value = getattr(torch, name, None) if not name.startswith("_") else None
        # Storage names are resolved by torch's legacy loader itself and by our zip reader.
        if isinstance(value, torch.dtype) or value is torch.Size or value is torch.device:
            return value
        return None
    if (module, name) in _NUMPY_ALLOWED:
        try:
            return getattr(importlib.import_module(module), name, None)
        except ImportError:
            return None
    if not allow_gate_module:
        return None
    if (module in _GATE_MODULES or module.endswith(".l0_module")) and name in _GATE_CLASSES:
        return PickledGateModule
    if (module == "transformers" or module.startswith("transformers.")) and name.endswith("Config"):
        return PickledConfig
    return None


def _disallowed(file: Path, module: str, name: str) -> UserError:
    return UserError(
        f"{file} contains a disallowed object {module}.{name}; refusing to load it, so get the file again "
        "from a source you trust."
    )


def restricted_pickle_module(
    file: Path, allow_gate_module: bool, storage_bytes: Optional[int] = None
) -> types.ModuleType:
    """A stand-in for the ``pickle`` module, for ``torch.load(pickle_module=...)``.

    Its ``Unpickler`` resolves only allow-listed globals and refuses everything else with a
    ``UserError`` naming ``file``, before any of the file's objects are built from it. With
    ``storage_bytes`` (the file's size), the storages that torch's legacy loader is asked to
    allocate may not add up to more bytes than that, checked before torch allocates them.
    """
    declared: Dict[Any, int] = {}

    def check_storage(pid: Any) -> None:
        # torch's legacy persistent id: ("storage", storage type, key, location, numel, view metadata)
        if storage_bytes is None or not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            return
        if len(pid) < 5 or not isinstance(pid[4], int) or pid[4] < 0:
            raise pickle.UnpicklingError("a malformed storage reference")
        dtype = getattr(pid[1], "dtype", None)
        itemsize = torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 8
        try:
            declared.setdefault(pid[2], pid[4] * itemsize)
        except TypeError:
            raise pickle.UnpicklingError("a malformed storage reference") from None
        if sum(declared.values()) > storage_bytes:
            raise pickle.UnpicklingError(
                f"storages of {sum(declared.values())} bytes declared in a file of {storage_bytes} bytes"
            )

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            value = allowed_global(module, name, allow_gate_module)
            if value is None:
                raise _disallowed(file, module, name)
            return value

        # torch's legacy loader assigns its own persistent_load to the instance; this wraps it.
        @property
        def persistent_load(self) -> Any:  # type: ignore[override]
            return self._checked_persistent_load

        @persistent_load.setter
        def persistent_load(self, load: Any) -> None:
            def checked(pid: Any) -> Any:
                check_storage(pid)
                return load(pid)

            self._checked_persistent_load = checked
            pickle.Unpickler.persistent_load.__set__(self, checked)  # type: ignore[attr-defined]

    def load(handle: Any, **kwargs: Any) -> Any:
        return Unpickler(handle, **kwargs).load()

    def loads(data: bytes, **kwargs: Any) -> Any:
        return Unpickler(io.BytesIO(data), **kwargs).load()

    module = types.ModuleType("top_restricted_pickle")
    module.Unpickler = Unpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.loads = loads  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return module


# ----------------------------------------------------------------------------------------------
# Torch files


# Everything torch.save writes into its zip (torch 1.6 .. 2.x), below the one top-level folder.
_PLAIN_MEMBERS = {"data.pkl", "version", ".format_version", "byteorder", ".storage_alignment",
                  ".data/version", ".data/serialization_id"}
_DATA_MEMBER = re.compile(r"data/[0-9]+")


class _ArchiveError(Exception):
    """A zip that is not a plain tensor file: its message says why."""


def _typed_storage(data: bytes, dtype: torch.dtype) -> Any:
    """A typed storage of ``dtype`` over a copy of ``data``, for ``torch._utils._rebuild_tensor_v2``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(data) % itemsize:
        raise _ArchiveError(f"a storage of {len(data)} bytes does not hold whole {dtype} elements")
    if data:
        flat = torch.frombuffer(bytearray(data), dtype=dtype)
    else:
        flat = torch.empty((0,), dtype=dtype)
    typed = getattr(flat, "_typed_storage", None)  # torch 2.x; torch 1.12's .storage() is already typed
    return typed() if typed is not None else flat.storage()


def _archive_prefix(names: List[str]) -> str:
    """The archive's one top-level folder, after checking that every member is a plain tensor file's."""
    prefixes = {name.split("/", 1)[0] for name in names}
    if len(prefixes) != 1 or any("/" not in name for name in names):
        raise _ArchiveError("its members do not share one top-level folder")
    prefix = prefixes.pop()
    extra = [
        name for name in names
        if name[len(prefix) + 1:] not in _PLAIN_MEMBERS and not _DATA_MEMBER.fullmatch(name[len(prefix) + 1:])
    ]
    if extra:
        raise _ArchiveError("it holds {}{}".format(", ".join(brief(name) for name in extra[:3]),
                                                   " …" if len(extra) > 3 else ""))
    if f"{prefix}/data.pkl" not in names:
        raise _ArchiveError("it has no data.pkl")
    return prefix


def _check_members_stored(archive: zipfile.ZipFile, file_size: int) -> None:
    """torch.save stores every member uncompressed; a compressed one could inflate far past the file's size."""
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > file_size:
            raise _ArchiveError(f"its member {info.filename} is compressed or larger than the file")


def _read_zip(file: Path, handle: Any, allow_gate_module: bool) -> Any:
    file_size = os.fstat(handle.fileno()).st_size
    with zipfile.ZipFile(handle) as archive:
        names = archive.namelist()
        try:
            prefix = _archive_prefix(names)
            _check_members_stored(archive, file_size)
        except _ArchiveError as why:
            raise UserError(
                f"{file} is a TorchScript archive or not a plain tensor file ({why}); refusing to load it, "
                "so get the file again from a source you trust."
            ) from None
        if f"{prefix}/byteorder" in names and archive.read(f"{prefix}/byteorder").strip() != b"little":
            raise UserError(f"{file} was saved on a big-endian machine; save it again on a little-endian one.")
        storages: Dict[str, Any] = {}

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if module == "torch" and name in _STORAGE_DTYPES:
                    return _StorageType(_STORAGE_DTYPES[name])
                value = allowed_global(module, name, allow_gate_module)
                if value is None:
                    raise _disallowed(file, module, name)
                return value

            def persistent_load(self, pid: Any) -> Any:
                if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                    raise _ArchiveError(f"unknown persistent id {clip(str(pid), 60)}")
                storage_type, key = pid[1], pid[2]
                if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not key.isdigit():
                    raise _ArchiveError("a malformed storage reference")
                if key not in storages:
                    member = f"{prefix}/data/{key}"
                    if member not in names:
                        raise _ArchiveError(f"{member} is missing")
                    storages[key] = _typed_storage(archive.read(member), storage_type.dtype)
                elif storages[key].dtype != storage_type.dtype:
                    raise _ArchiveError(f"storage {key} is used with two dtypes")
                return storages[key]

        return Unpickler(io.BytesIO(archive.read(f"{prefix}/data.pkl")), encoding="utf-8").load()


_TAR_MEMBERS = ("storages", "tensors", "pickle")


def _check_tar(file: Path, handle: Any) -> None:
    """torch tries its oldest format, a tar, on every file that is not a zip: it extracts members and
    opens them, so a FIFO (or a link, a device) among them would block or escape. Only the three
    regular files that format holds may be there."""
    import tarfile

    try:
        with tarfile.open(fileobj=handle, mode="r:") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError, ValueError):
        return  # not a tar: torch's loader goes on to the pickle formats
    finally:
        handle.seek(0)
    for member in members:
        if not member.isreg():
            why = f"whose member {brief(member.name)} is not a regular file (a FIFO, link or device)"
        elif member.name not in _TAR_MEMBERS:
            why = f"with a member {brief(member.name)} that torch's tar format never holds"
        else:
            continue
        raise UserError(
            f"{file} is a tar archive {why}; refusing to load it, so get the file again from a source you trust."
        )


def _read_legacy(file: Path, handle: Any, allow_gate_module: bool) -> Any:
    """torch's pre-zip format or a raw pickle: every pickle of that path goes through ``pickle_module``."""
    _check_tar(file, handle)
    pickle_module = restricted_pickle_module(file, allow_gate_module, os.fstat(handle.fileno()).st_size)
    kwargs = {"weights_only": False} if _TORCH_HAS_WEIGHTS_ONLY else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
        warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
        # The handle whose first bytes were checked, not the path: the file cannot change in between.
        return torch.load(handle, map_location="cpu", pickle_module=pickle_module, **kwargs)


def read_torch_file(
    path: PathLike, *, allow_gate_module: bool = False, what: str = "file", fix: Optional[str] = None
) -> Any:
    """The objects of a file written by ``torch.save`` (or a plain pickle), on the CPU; nothing in it runs.

    Only tensors, containers, numbers, strings, dtypes and numpy arrays come back (plus the
    inert gate-module stand-ins with ``allow_gate_module``). Every failure is a ``UserError``
    naming the file: a TorchScript archive, a disallowed object, or a corrupt or truncated file
    (``what`` names it in the advice, e.g. "model weights"; ``fix`` replaces the advice).
    """
    file = Path(path)
    try:
        with open(file, "rb") as handle:
            head = handle.read(4)
            handle.seek(0)
            if head == _ZIP_MAGIC:
                return _read_zip(file, handle, allow_gate_module)
            return _read_legacy(file, handle, allow_gate_module)
    except UserError:
        raise
    except Exception as error:  # zip, pickle, EOF, CRC, storage-size errors: the file is damaged
        raise UserError(
            f"{file} is corrupt or not a torch file ({error_detail(error)}); "
            f"{fix or f'download or save the {what} again'}."
        ) from None


# ----------------------------------------------------------------------------------------------
# safetensors


def _safetensors_torch() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise UserError(
            "The safetensors package is missing; install it with `pip install safetensors` "
            "(requirements/pinned.txt has the pinned version)."
        ) from None
    return safetensors.torch


def read_safetensors(path: PathLike, *, what: str = "file", fix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU; a ``UserError`` naming it when it is damaged."""
    tensors, _ = read_safetensors_with_metadata(path, what=what, fix=fix)
    return tensors


def read_safetensors_with_metadata(
    path: PathLike, *, what: str = "file", fix: Optional[str] = None
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    file = Path(path)
    _safetensors_torch()  # a clear message when the package is missing
    try:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # SafetensorError, OSError, ...
        raise UserError(
            f"{file} is corrupt ({error_detail(error)}); {fix or f'download or save the {what} again'}."
        ) from None
    return tensors, metadata


def write_safetensors(path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Optional[Dict] = None) -> None:
    """``tensors`` as one safetensors file; each is copied, so tensors that share memory are fine.

    A full disk (safetensors says so in a ``SafetensorError``) is an ``OSError`` naming ``path``.
    """
    st = _safetensors_torch()
    plain = {
        key: value.detach().to("cpu").clone(memory_format=torch.contiguous_format) for key, value in tensors.items()
    }
    try:
        st.save_file(plain, str(path), metadata=metadata)
    except Exception as error:  # noqa: BLE001 - SafetensorError is no OSError
        failure = storage_failure(error, path, probe=Path(path).parent)
        if failure is None:
            raise
        with contextlib.suppress(OSError):
            os.remove(path)  # what was written of it is no safetensors file
        raise failure from None


# ----------------------------------------------------------------------------------------------
# A model directory's weights


def read_state_dict(directory: PathLike, *, check_manifest: bool = True) -> Dict[str, torch.Tensor]:
    """A model directory's weights: ``model.safetensors`` when present, else ``pytorch_model.bin``.

    With ``check_manifest``, a directory that top wrote (it has ``manifest.json``) has the weights
    file checked against the sha256 recorded there before it is read.
    """
    directory = Path(directory)
    safe_file, bin_file = directory / SAFETENSORS_FILE, directory / WEIGHTS_FILE
    if check_manifest:
        verify_manifest(directory, [SAFETENSORS_FILE if safe_file.is_file() else WEIGHTS_FILE])
    if safe_file.is_file():
        return read_safetensors(safe_file, what="model weights")
    if bin_file.is_file():
        state = read_torch_file(bin_file, what="model weights")
        if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise UserError(
                f"{bin_file} does not hold a state dict of named tensors; save the model with save_pretrained "
                "and try again."
            )
        return dict(state)
    sharded = sorted(p.name for p in directory.glob("*.index.json"))
    if sharded:
        raise UserError(
            f"{directory / sharded[0]} describes a sharded checkpoint, which top does not read; save the model "
            "again as one file (save_pretrained with a max_shard_size above its size)."
        )
    raise UserError(
        f"{directory} has neither {WEIGHTS_FILE} nor {SAFETENSORS_FILE}; point to a directory that holds "
        "the model weights."
    )


# ----------------------------------------------------------------------------------------------
# A tree of tensors and plain values as one safetensors file

TREE_FORMAT = "top-tree-v1"


def flatten_tree(tree: Any) -> Tuple[Any, Dict[str, torch.Tensor]]:
    """``(structure, tensors)``: the structure is JSON-able and names each tensor by its dotted path.

    Handles dicts (any str/int/float/bool/None keys), lists, tuples, tensors, numpy arrays,
    None, bools, ints, floats (exactly, inf and nan included) and strings.
    """
    tensors: Dict[str, torch.Tensor] = {}

    def key_for(path: List[str]) -> str:
        key = ".".join(path) or "root"
        base, n = key, 1
        while key in tensors:
            key, n = f"{base}#{n}", n + 1
        return key

    def encode(value: Any, path: List[str]) -> Any:
        if isinstance(value, torch.Tensor):
            key = key_for(path)
            tensors[key] = value
            return {"tensor": key}
        if type(value).__module__ == "numpy" and hasattr(value, "dtype") and hasattr(value, "shape"):
            key = key_for(path)
            if value.dtype.kind not in "biuf":
                raise TypeError(f"cannot store a numpy {value.dtype} array at {'.'.join(path)}")
            # Stored as int64 or float64: torch 1.12 has no uint32, the dtype numpy's RNG keys have.
            wide = "int64" if value.dtype.kind in "biu" else "float64"
            tensors[key] = torch.from_numpy(value.astype(wide).reshape(-1))
            return {"numpy": key, "dtype": value.dtype.str, "shape": list(value.shape)}
        if value is None or isinstance(value, (bool, str)):
            return {"value": value}
        if isinstance(value, int):
            return {"int": str(value)}
        if isinstance(value, float):
            return {"float": value.hex()}
        if isinstance(value, (list, tuple)):
            items = [encode(item, path + [str(i)]) for i, item in enumerate(value)]
            return {"tuple" if isinstance(value, tuple) else "list": items}
        if isinstance(value, Mapping):
            return {"dict": [[encode(k, []), encode(v, path + [str(k)])] for k, v in value.items()]}
        raise TypeError(f"cannot store a {type(value).__name__} at {'.'.join(path) or 'the root'}")

    return encode(tree, []), tensors


def unflatten_tree(structure: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of :func:`flatten_tree`; ``ValueError`` when the structure is malformed."""
    import numpy as np

    def decode(node: Any) -> Any:
        if not isinstance(node, dict) or len(node) not in (1, 3):
            raise ValueError(f"malformed node {clip(str(node), 60)}")
        kind = next(iter(node))
        body = node[kind]
        if kind == "tensor":
            return tensors[body]
        if kind == "numpy":
            return np.asarray(tensors[body].numpy(), dtype=np.dtype(node["dtype"])).reshape(node["shape"])
        if kind == "value":
            if body is not None and not isinstance(body, (bool, str)):
                raise ValueError("a value that is not None, a bool or a string")
            return body
        if kind == "int":
            return int(body)
        if kind == "float":
            return float.fromhex(body)
        if kind == "list":
            return [decode(item) for item in body]
        if kind == "tuple":
            return tuple(decode(item) for item in body)
        if kind == "dict":
            return {decode(k): decode(v) for k, v in body}
        raise ValueError(f"unknown node kind {kind!r}")

    return decode(structure)


def write_tree(path: PathLike, tree: Any) -> None:
    """``tree`` as one safetensors file: its tensors, and its structure in the file's metadata."""
    structure, tensors = flatten_tree(tree)
    write_safetensors(path, tensors, metadata={"format": TREE_FORMAT, "structure": json.dumps(structure)})


def read_tree(path: PathLike, *, what: str = "file", fix: Optional[str] = None) -> Any:
    """What :func:`write_tree` wrote."""
    file = Path(path)
    advice = fix or f"save the {what} again"
    tensors, metadata = read_safetensors_with_metadata(file, what=what, fix=fix)
    if metadata.get("format") != TREE_FORMAT:
        raise UserError(f"{file} was not written by top (no '{TREE_FORMAT}' metadata); {advice}.")
    try:
        return unflatten_tree(json.loads(metadata["structure"]), tensors)
    except (KeyError, ValueError, TypeError, RecursionError) as error:
        raise UserError(f"{file} is corrupt ({error_detail(error)}); {advice}.") from None


__all__ = [
    "PickledConfig",
    "PickledGateModule",
    "allowed_global",
    "error_detail",
    "flatten_tree",
    "read_safetensors",
    "read_state_dict",
    "read_torch_file",
    "read_tree",
    "restricted_pickle_module",
    "unflatten_tree",
    "write_safetensors",
    "write_tree",
]
