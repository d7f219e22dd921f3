"""Python stubs for ``proto/grpc_predict_v2.proto``, generated with grpcio-tools on first use, never committed.

:func:`load` runs ``grpc_tools.protoc`` once into a cache folder keyed by the proto's hash and
the grpcio-tools / protobuf versions (a changed proto or an upgraded toolchain regenerates), then
imports the two modules: ``pb2`` (messages) and ``pb2_grpc`` (``GRPCInferenceServiceStub``,
``GRPCInferenceServiceServicer``, ``add_GRPCInferenceServiceServicer_to_server``).

The cache is ``_grpc_gen/`` beside this file when that is writable (it holds a ``.gitignore``
of ``*``), else ``$TIDAL_GRPC_STUBS``, else ``~/.cache/tidal/grpc`` or the temp folder. Two
adjustments to protoc's output, so the stubs live beside other OIP stubs in one process:

- the messages go into a descriptor pool of their own, not protobuf's default one, where
  ``tritonclient.grpc`` (or KServe) registers the same ``inference.*`` names — a clash otherwise;
- ``pb2_grpc`` imports ``pb2`` relatively, so the cache folder need not be on ``sys.path``.

The wire format is unchanged: method paths stay ``/inference.GRPCInferenceService/<Rpc>``.

>>> pb2, pb2_grpc = load()
>>> pb2.ModelInferRequest(model_name="m", raw_input_contents=[b"\\x00"]).DESCRIPTOR.full_name
'inference.ModelInferRequest'
>>> hasattr(pb2_grpc, "GRPCInferenceServiceStub")
True
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
from importlib.metadata import version as _version
from pathlib import Path
from types import ModuleType

__all__ = ["PROTO", "load", "cache_dirs"]

PROTO = Path(__file__).resolve().parent / "proto" / "grpc_predict_v2.proto"
_STEM = "grpc_predict_v2"
_lock = threading.Lock()
_loaded: tuple[ModuleType, ModuleType] | None = None


def _key() -> str:
    h = hashlib.sha256(PROTO.read_bytes())
    for dist in ("grpcio-tools", "protobuf"):
        h.update(f"\0{dist}={_version(dist)}".encode())
    return h.hexdigest()[:16]


def cache_dirs() -> list[Path]:
    """Where stubs may be cached, in the order tried."""
    dirs = [Path(__file__).resolve().parent / "_grpc_gen"]
    if os.environ.get("TIDAL_GRPC_STUBS"):
        dirs.append(Path(os.environ["TIDAL_GRPC_STUBS"]))
    dirs += [Path.home() / ".cache" / "tidal" / "grpc", Path(tempfile.gettempdir()) / f"tidal-grpc-{os.getuid()}"]
    return dirs


def _generate(target: Path) -> None:
    """protoc into a fresh folder beside ``target``, patched, then renamed into place (atomic)."""
    from grpc_tools import protoc

    target.parent.mkdir(parents=True, exist_ok=True)
    ignore = target.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# generated gRPC stubs (tidal.serve.grpc_stubs)\n*\n")
    work = Path(tempfile.mkdtemp(prefix=".gen-", dir=target.parent))
    try:
        include = str(Path(protoc.__file__).resolve().parent / "_proto")  # well-known types
        args = ["grpc_tools.protoc", f"-I{PROTO.parent}", f"-I{include}", f"--python_out={work}",
                f"--grpc_python_out={work}", str(PROTO)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {PROTO}")
        pb2, grpc_py = work / f"{_STEM}_pb2.py", work / f"{_STEM}_pb2_grpc.py"
        text = pb2.read_text()
        if "_descriptor_pool.Default()" not in text:
            raise RuntimeError("unexpected protoc output: no _descriptor_pool.Default()")
        pb2.write_text(text.replace("_descriptor_pool.Default()", "_descriptor_pool.DescriptorPool()"))
        text = grpc_py.read_text()
        plain = f"import {_STEM}_pb2 as"
        if plain not in text:
            raise RuntimeError(f"unexpected protoc output: no '{plain}'")
        grpc_py.write_text(text.replace(plain, f"from . import {_STEM}_pb2 as"))
        (work / "__init__.py").write_text(f"# generated from {PROTO.name} by tidal.serve.grpc_stubs\n")
        os.chmod(work, 0o755)  # mkdtemp makes it private; the stubs are for every user of this install
        try:
            os.replace(work, target)
        except OSError:
            if not (target / "__init__.py").exists():  # not another process's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _import(folder: Path, key: str) -> tuple[ModuleType, ModuleType]:
    name = f"tidal.serve._oip_v2_stubs_{key}"
    package = sys.modules.get(name)
    if package is None:
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{name}.{_STEM}_pb2"), importlib.import_module(f"{name}.{_STEM}_pb2_grpc")


def load() -> tuple[ModuleType, ModuleType]:
    """``(pb2, pb2_grpc)``, generated into the first writable cache folder if not there yet."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        key = _key()
        errors = []
        for base in cache_dirs():
            folder = base / f"v2-{key}"
            try:
                if not (folder / "__init__.py").exists():
                    _generate(folder)
                _loaded = _import(folder, key)
                return _loaded
            except OSError as exc:  # not writable: try the next folder
                errors.append(f"{base}: {exc}")
        raise RuntimeError("could not generate the gRPC stubs in any cache folder: " + "; ".join(errors))
