"""Model runtimes: one small interface over a LiteRT ``.tflite`` model and a Keras ``.keras`` model.

Both take a batch of RGB images in [0, 255] at one of the model's shapes (``shape_for`` picks it for a
photo: the model's square, or the shape nearest the photo's aspect for a keep-aspect model; see
shapes.py) and return alphas in [0, 1]. LiteRT is
the default for the shipped model because it starts in milliseconds; TensorFlow is imported only when a
``.keras`` model is asked for.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from .paths import default_model_path
from .shapes import all_shapes, nearest_shape

DEVICES = ("auto", "cpu", "gpu")


class ModelError(Exception):
    """A model file that cannot be used; the message is one line naming the file and the reason."""


class Runtime(Protocol):
    path: Path
    size: tuple[int, int]  # (height, width) the model expects: its square one for a keep-aspect model
    aspect: str  # "stretch" (every photo at ``size``) or "keep" (see shapes.py)
    shapes: list[tuple[int, int]]  # every (height, width) it takes

    def shape_for(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) a photo of this size is fed at."""
        ...

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) float32 RGB in [0, 255] at one of the model's shapes -> (N, H, W) float32 alpha in [0, 1]."""
        ...


def _first_line(exc: BaseException, limit: int = 120) -> str:
    """The first line of a library's error, cut at a word if long: enough to tell what is wrong."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


def _check_shapes(path: Path, inp: tuple, outp: tuple) -> None:
    if len(inp) != 4 or inp[-1] != 3:
        raise ModelError(f"{path}: expects input {tuple(inp)}, not an RGB image model (N, H, W, 3)")
    if len(outp) not in (3, 4) or (len(outp) == 4 and outp[-1] != 1):
        raise ModelError(f"{path}: gives output {tuple(outp)}, not a one-channel alpha (N, H, W, 1)")


@contextmanager
def quiet_stderr():
    """Silence native-code chatter on file descriptor 2 for the duration of the block."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow():
    """Import TensorFlow without its start-up chatter (oneDNN notes that ignore TF_CPP_MIN_LOG_LEVEL)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_stderr():
        import tensorflow as tf
    return tf


@lru_cache(maxsize=1)
def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has AMX int8 tiles (Linux reports it in /proc/cpuinfo; elsewhere: assumed not)."""
    try:
        with cpuinfo.open() as lines:
            for line in lines:
                if line.startswith("flags"):  # the first core's; all cores have the same
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


_AT_MINSIGSTKSZ = 51  # getauxval(): the signal stack that a frame with every register the CPU has needs
_AMX_STATE = 8192 + 64  # bytes of AMX registers (tile data and tile config) in a signal frame
_SS_ONSTACK = 1
_xnnpack_set_up = False


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextmanager
def xnnpack_without_amx():
    """Keep XNNPACK off the CPU's AMX tiles while the process's first interpreter sets it up.

    Where the CPU has AMX (Intel Xeons since Sapphire Rapids), XNNPACK runs int8 convolutions on tiles 64
    output channels wide, which this model's 8- to 96-channel layers mostly leave empty: the int8 model
    took 1.2x the time of its float32 export there, and with AVX-512 VNNI instead about 0.85x (see
    benchmarks/README.md). XNNPACK decides once per process, and uses AMX only if Linux lets the process
    have the tiles' registers (arch_prctl ARCH_REQ_XCOMP_PERM); Linux says no while a thread's alternate
    signal stack is too small for a signal frame that holds them. So this thread gets such a stack, 4 KB
    short of that size, until an interpreter has been made, and then gets its own back. Nothing else
    changes; a process that already uses AMX keeps it.
    """
    global _xnnpack_set_up
    if _xnnpack_set_up or not (sys.platform == "linux" and platform.machine() == "x86_64" and cpu_has_amx()):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.getauxval.restype = ctypes.c_ulong
    frame = libc.getauxval(_AT_MINSIGSTKSZ)
    if frame < _AMX_STATE + 2048:  # the kernel's signal frame holds no AMX registers (or it does not say)
        yield
        return
    size = frame - 4096  # too small with the AMX registers, room to spare without them
    buffer = ctypes.create_string_buffer(size)
    small, own = _SignalStack(ctypes.cast(buffer, ctypes.c_void_p), 0, size), _SignalStack()
    if libc.sigaltstack(ctypes.byref(small), ctypes.byref(own)) != 0:  # e.g. the process already uses AMX
        yield
        return
    try:
        yield
        _xnnpack_set_up = True  # not when the model failed to load: XNNPACK may not have started
    finally:
        own.ss_flags &= ~_SS_ONSTACK
        libc.sigaltstack(ctypes.byref(own), None)


_delegate_announced = False


def _announce_delegate_quietly(interpreter) -> None:
    """Allocate the first entry point here, where stderr is silenced, in the first runtime of a process.

    LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" once per process, when an entry point
    first allocates its tensors: otherwise at the first photo's call, in a worker thread, where silencing
    stderr would also silence the main thread's messages about other files. Costs nothing when the first
    photo takes that entry point's shape, else the packing of its weights (25-60 ms on 2 cores).
    """
    global _delegate_announced
    if not _delegate_announced:
        interpreter.allocate_tensors()
        _delegate_announced = True


class LiteRTRuntime:
    """A .tflite model. A keep-aspect model holds one entry point (signature ``alpha_<rows>x<cols>``) per
    shape it takes (see model.export_tflite); each photo goes to the one nearest its aspect."""

    def __init__(self, path: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = path
        self.threads = threads or os.cpu_count() or 1
        try:
            # LiteRT's C++ side announces its XNNPACK delegate on stderr.
            with quiet_stderr(), xnnpack_without_amx():
                self.interpreter = Interpreter(model_path=str(path), num_threads=self.threads)
                _announce_delegate_quietly(self.interpreter)
                keys = {}
                for key in self.interpreter.get_signature_list():
                    match = re.fullmatch(r"alpha_(\d+)x(\d+)", key)
                    if match:
                        keys[(int(match[1]), int(match[2]))] = key
                self._keys, self._runners = keys, {}
                if keys:
                    runner = self._runner(next(iter(keys)))
                    inp, outp = runner.get_input_details()["image"], next(iter(runner.get_output_details().values()))
                else:
                    self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ModelError(f"{path}: not a valid LiteRT model ({_first_line(exc)})") from None
        if keys:
            self.aspect = "keep"
            self.shapes = list(keys)
        else:
            self.aspect = "stretch"
            inp, outp = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        _check_shapes(path, tuple(inp["shape"]), tuple(outp["shape"]))
        if inp["dtype"] != np.float32:
            raise ModelError(f"{path}: input type {inp['dtype'].__name__} is not supported (float32 needed)")
        if not keys:
            self.input, self.output = inp, outp
            self.shapes = [(int(inp["shape"][1]), int(inp["shape"][2]))]
        # The square one for a keep-aspect model (the shape a square photo gets).
        self.size = self.shape_for(1, 1)

    def _runner(self, shape: tuple[int, int]):
        """The entry point for ``shape``, made (and its tensors allocated) on first use."""
        if shape not in self._runners:
            with quiet_stderr():
                self._runners[shape] = self.interpreter.get_signature_runner(self._keys[shape])
        return self._runners[shape]

    def shape_for(self, height: int, width: int) -> tuple[int, int]:
        return nearest_shape(height, width, self.shapes)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        shape = tuple(batch.shape[1:3])
        if shape not in self.shapes:
            raise ValueError(f"{self.path}: takes {self.shapes} (rows, cols), not {shape}")
        out = []
        for image in batch:  # the exported model has a batch of one; XNNPACK threads within each call
            image = image[np.newaxis].astype(np.float32, copy=False)
            if self.aspect == "keep":
                alpha = next(iter(self._runner(shape)(image=image).values()))
            else:
                self.interpreter.set_tensor(self.input["index"], image)
                self.interpreter.invoke()
                alpha = self.interpreter.get_tensor(self.output["index"])
            out.append(alpha.reshape(shape))
        return np.stack(out)

    def clone(self) -> LiteRTRuntime:
        """Another interpreter on the same model, for another thread: an interpreter runs one call at a time."""
        return LiteRTRuntime(self.path, self.threads)


class KerasRuntime:
    def __init__(self, path: Path, size: int | None = None, device: str = "auto"):
        try:
            tf = import_tensorflow()
            import keras
        except ImportError:
            raise ModelError(f"{path}: .keras models need TensorFlow: pip install 'bgremove[train]'") from None
        from . import model as _registered  # noqa: F401 - registers the custom loss for loading

        if device == "gpu" and not tf.config.list_physical_devices("GPU"):
            raise ModelError("--device gpu: TensorFlow sees no GPU on this machine")
        self.device = "/GPU:0" if device == "gpu" else ("/CPU:0" if device == "cpu" else None)
        self.path = path
        try:
            self.model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
            text = str(exc)
            if "safe_mode" in text or "Lambda" in text:
                raise ModelError(
                    f"{path}: refused: the model holds Python code (a Lambda layer), which bgremove never runs "
                    "(Keras safe mode); rebuild it without Lambda layers"
                ) from None
            raise ModelError(f"{path}: cannot load Keras model ({_first_line(exc)})") from None
        inp, outp = tuple(self.model.input_shape), tuple(self.model.output_shape)
        _check_shapes(path, inp, outp)
        fixed = inp[1:3]
        self.aspect = "stretch"
        if None in fixed:
            from .model import input_size

            recorded = input_size(self.model)
            side = size or (recorded[0] if recorded else 256)
            self.size = (side, side)
            self.aspect = recorded[1] if recorded else "stretch"
        else:
            if size and (size, size) != tuple(fixed):
                raise ModelError(f"{path}: input size is fixed at {fixed[1]}x{fixed[0]}; --size {size} is not possible")
            self.size = (int(fixed[0]), int(fixed[1]))
        self.shapes = all_shapes(self.size[0], self.aspect)

    def shape_for(self, height: int, width: int) -> tuple[int, int]:
        return nearest_shape(height, width, self.shapes)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        if self.device:
            with tf.device(self.device):
                out = self.model(batch, training=False)
        else:
            out = self.model(batch, training=False)
        return np.asarray(out, dtype=np.float32).reshape(batch.shape[:3])


def load_runtime(
    path: Path | str | None = None, size: int | None = None, threads: int | None = None, device: str = "auto"
) -> Runtime:
    """Open a model file (default: the shipped model) with the runtime its format needs."""
    path = Path(path) if path else default_model_path()
    if device not in DEVICES:
        raise ModelError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if not path.exists():
        hint = " (the package was installed without its weights)" if path == default_model_path() else ""
        raise ModelError(f"{path}: model file not found{hint}")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not a model file")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        if device == "gpu":
            raise ModelError(f"{path}: --device gpu needs a .keras model (LiteRT runs on the CPU here)")
        runtime = LiteRTRuntime(path, threads)
        if size and (size, size) != runtime.size:
            raise ModelError(
                f"{path}: input size is fixed at {runtime.size[1]}x{runtime.size[0]}; --size {size} is not possible"
            )
        return runtime
    if suffix == ".keras":
        return KerasRuntime(path, size, device)
    raise ModelError(f"{path}: unsupported model format {suffix or '(none)'}; use a .tflite or .keras file")
