"""Build, load and register jdet's oneDNN convolution extension for XLA:CPU.

`onednn_conv.cc` (next to this file) defines three XLA FFI handlers — forward, input gradient,
weight gradient of a float32 NHWC/HWIO convolution — on top of oneDNN. On first use it is
compiled with the system C++ compiler (``$CXX`` or ``g++``) against the oneDNN wheels that
jdet depends on on Linux x86-64 (``onednn-cpu-gomp`` for ``libdnnl``, ``onednn-devel-cpu-gomp``
for its headers) and JAX's FFI headers, into a cache folder keyed by everything that goes
into the build (``$JDET_NATIVE_CACHE``, default ``~/.cache/jdet/native``). Later processes
load the cached library (no compiler needed). ``$JDET_ONEDNN_LIBRARY`` names a prebuilt
library to load instead.

`status()` says whether the extension can be used and why not; `load()` registers the FFI
targets once per process and raises `OneDnnUnavailable` with the reason when it cannot.
``python -m jdet.native`` builds it and prints the status.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import site
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("onednn_conv.cc")
TARGETS = ("jdet_onednn_conv_fwd", "jdet_onednn_conv_bwd_data", "jdet_onednn_conv_bwd_weights")
_LIB_NAMES = ("libdnnl.so.3", "libdnnl.so")


class OneDnnUnavailable(RuntimeError):
    """The oneDNN convolution extension cannot be built or loaded here (the message says why)."""


def _prefixes() -> list[Path]:
    roots = [
        os.environ.get("JDET_ONEDNN_ROOT", ""),
        sys.prefix,
        sys.base_prefix,
        site.getuserbase(),
    ]  # the last: where `pip install --user` puts data files
    out: list[Path] = []
    for r in roots:
        if r and Path(r) not in out:
            out.append(Path(r))
    return out


def find_onednn() -> tuple[Path, Path]:
    """(library file, include folder) of an installed oneDNN 3.x, or OneDnnUnavailable."""
    for prefix in _prefixes():
        inc = prefix / "include"
        if not (inc / "oneapi" / "dnnl" / "dnnl.hpp").is_file():
            continue
        for name in _LIB_NAMES:
            lib = prefix / "lib" / name
            if lib.is_file():
                return lib, inc
    raise OneDnnUnavailable(
        "oneDNN was not found (looked for include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so.3 "
        f"under {', '.join(str(p) for p in _prefixes())}); install it with "
        "`pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0` "
        "(jdet's Linux x86-64 dependencies) or set JDET_ONEDNN_ROOT to its prefix"
    )


def cache_dir() -> Path:
    env = os.environ.get("JDET_NATIVE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "jdet" / "native"


def _build_key(lib: Path, inc: Path, ffi_inc: str, cxx: str) -> str:
    import jaxlib.version

    h = hashlib.sha256()
    h.update(SOURCE.read_bytes())
    for part in (
        str(lib.resolve()),
        str(lib.stat().st_size),
        str(inc),
        ffi_inc,
        cxx,
        jaxlib.version.__version__,
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


_BUILD_LOCK = threading.Lock()  # one build at a time in a process (see start_build)


def start_build() -> threading.Thread | None:
    """Start `build()` on a background thread (the compiler runs as a subprocess, so a process
    can prepare its data meanwhile); None when the library is prebuilt (``$JDET_ONEDNN_LIBRARY``).
    A later `build()` or `load()` waits for it; a failure is not raised here but by that later
    call, which tries again and says why."""
    if os.environ.get("JDET_ONEDNN_LIBRARY"):
        return None

    def quiet_build():
        try:
            build()
        except Exception:  # noqa: BLE001 — load() builds again and raises with the reason
            pass

    thread = threading.Thread(target=quiet_build, name="jdet-onednn-build", daemon=True)
    thread.start()
    return thread


def build(verbose: bool = False) -> Path:
    """Compile the extension (or find the cached build) and return the shared library's path.

    Says so on stderr when it compiles (with the command when verbose)."""
    with _BUILD_LOCK:
        return _build(verbose)


def _build(verbose: bool) -> Path:
    import jax.ffi

    lib, inc = find_onednn()
    cxx = os.environ.get("CXX", "g++")
    ffi_inc = jax.ffi.include_dir()
    out = cache_dir() / _build_key(lib, inc, ffi_inc, cxx) / "libjdet_onednn.so"
    if out.is_file():
        return out
    if shutil.which(cxx) is None:
        raise OneDnnUnavailable(
            f"no C++ compiler {cxx!r} on PATH to build jdet's oneDNN extension once "
            "(install g++ or set CXX); it is cached afterwards"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename: concurrent processes (pytest workers) never see a
    # half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [
        cxx,
        "-O2",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-fopenmp",
        "-w",
        "-isystem",
        str(inc),
        "-isystem",
        ffi_inc,
        str(SOURCE),
        "-o",
        tmp,
        f"-L{lib.parent}",
        f"-l:{lib.name}",
        f"-Wl,-rpath,{lib.parent}",
    ]
    print(
        f"jdet: building the oneDNN convolution extension once (a few seconds) into "
        f"{out.parent}" + (f": {' '.join(cmd)}" if verbose else ""),
        file=sys.stderr,
        flush=True,
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        raise OneDnnUnavailable(
            f"building {SOURCE.name} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}"
        )
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)
    return out


_LOCK = threading.Lock()
_STATE: dict = {}


def load() -> ctypes.CDLL:
    """Build if needed, load the library and register its FFI targets for the CPU platform.

    Idempotent; raises OneDnnUnavailable (remembered for the process) when it cannot.
    """
    with _LOCK:
        if "lib" in _STATE:
            return _STATE["lib"]
        if "error" in _STATE:
            raise OneDnnUnavailable(_STATE["error"])
        try:
            import jax.ffi

            # A prebuilt library (for example one compiled with other options) wins.
            path = (
                Path(os.environ["JDET_ONEDNN_LIBRARY"])
                if os.environ.get("JDET_ONEDNN_LIBRARY")
                else build()
            )
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as e:
                raise OneDnnUnavailable(f"loading {path} failed: {e}") from e
            for name in TARGETS:
                jax.ffi.register_ffi_target(
                    name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu"
                )
        except OneDnnUnavailable as e:
            _STATE["error"] = str(e)
            raise
        _STATE["lib"] = lib
        return lib


def version() -> str:
    """oneDNN's version as loaded ("3.2.0"); loads the extension."""
    lib = load()
    v = [ctypes.c_int() for _ in range(3)]
    lib.jdet_onednn_version(*(ctypes.byref(x) for x in v))
    return ".".join(str(x.value) for x in v)


def stats() -> list[dict]:
    """Time spent in the extension so far in this process, one row per (kind, shape): kind
    ("fwd", "bwd_data", "bwd_weights"), shape [n, h, w, c, o, kh, kw, oh, ow, sh, sw, pt, pb, pl,
    pr], threads (OpenMP threads per chunk), seconds (wall time in the handler), calls."""
    lib = load()
    size = lib.jdet_onednn_stats(None, 0)
    buf = ctypes.create_string_buffer(size)
    lib.jdet_onednn_stats(buf, size)
    kinds = ("fwd", "bwd_data", "bwd_weights")
    rows = []
    for line in buf.value.decode().splitlines():
        f = line.split()
        rows.append(
            dict(
                kind=kinds[int(f[0])],
                shape=[int(x) for x in f[1:16]],
                threads=int(f[16]),
                seconds=float(f[17]),
                calls=int(float(f[18])),
            )
        )
    return rows


def status() -> tuple[bool, str]:
    """(usable, one line for people): loads the extension if it can."""
    try:
        load()
    except OneDnnUnavailable as e:
        return False, str(e)
    return True, f"oneDNN {version()} convolution extension loaded from {build()}"
