"""envbox function-environment worker.

The sandbox agent (Rust, PID 1) serves the affinetes-compatible HTTP API
(/health, /methods, /call, POST /<method>) and delegates loading the user's
env.py and running its methods to this long-lived process. The agent embeds
this file and starts it as

    python3 -u -c <this source> /app/env.py

with cwd = the environment directory.  sys.argv becomes [<env.py path>].  Only
the standard library is used, and the code runs on Python 3.8 and later.

File descriptors
----------------
* fd 3: requests, agent -> worker.  fd 4: responses, worker -> agent.
  Both are made close-on-exec at start, so programs the environment spawns
  do not inherit them, and they are closed in children the environment forks
  without exec (multiprocessing "fork"), so the agent sees EOF on fd 4 as
  soon as this process dies.
* stdin is /dev/null; stdout and stderr go to the environment's log.  User
  output never reaches fd 4.

Framing (both directions)
-------------------------
A 4-byte big-endian unsigned length, then that many bytes of UTF-8 JSON
holding one object.  Frames on fd 4 are written whole under a lock.  EOF on
fd 3 means the agent is gone: the worker exits at once with status 0.

worker -> agent, first frame
----------------------------
After env.py has been imported (as module "user_env", registered in
sys.modules before it executes; sys.path[0] is the environment directory):

    {"type": "ready", "methods": M, "routes": [name, ...], "pid": <int>}

M is the exact body of GET /methods: {"methods": [...], "usage": {...}}.
Actor methods come first (public callable names of dir(Actor), signature of
the class attribute so "self" is included, "(...)" when inspect.signature
fails), then module functions (public callable non-class names of
dir(module), imported functions included), without de-duplication.  Each
entry is {"name", "signature", "source": "Actor"|"module",
"endpoint": "POST /<name>", "doc": <first docstring line or null>}.
"routes" lists the distinct names in /methods order (the RESTful routes).
Both are a snapshot taken at load time.

If the import fails (any exception, SyntaxError and a missing file included):

    {"type": "load_error",
     "error": {"type": <class name>, "message": <str(e)>, "traceback": <text>}}

and the worker exits with status 3.

agent -> worker
---------------
    {"type": "call", "id": <int>, "method": <str>, "args": [...], "kwargs": {...}}
    {"type": "cancel", "id": <int>}

kwargs is passed to the method unchanged, "timeout" included: enforcing the
timeout is the agent's job.  Frames of another type are logged and ignored.

worker -> agent, results
------------------------
Every call gets exactly one result frame, except an async call whose task
ends cancelled because of a "cancel" frame: it gets none.  Everything else
a "cancel" cannot stop is answered as usual: a sync call (threads cannot be
interrupted: it runs to completion), an async call that had already
finished, that swallowed the cancellation, or whose task had not started
yet (it was still waiting for the Actor to be created).  So the agent must
ignore results whose id it no longer waits for.  A "cancel" is never
answered itself.  A task cancelled by something else than a "cancel" (user
code cancelling what it awaits) is answered as "raised" CancelledError.

    {"type": "result", "id": <id>, "ok": true, "result": <JSON value>}
    {"type": "result", "id": <id>, "ok": false, "status": <HTTP status>,
     "detail": <reference detail string>,
     "error": {"type": <str>, "message": <str>, "traceback": <str>, "kind": <kind>}}

    kind              status  detail
    actor_init        500     "Failed to initialize Actor: <str(e)>"
    not_found         404     "Method not found: <name>"
    raised            500     "<str(e)>\\n<traceback>"
    not_serializable  500     "Result of method '<name>' is not JSON-serializable: <reason>"
    internal          500     "envbox worker error: <reason>" (an agent or worker bug,
                              such as a malformed call frame; never caused by user code)

"traceback" is always a string, empty when no exception is involved
(not_found, not_serializable, internal); the worker's own frames are left
out of it.  "type" is the exception's class name, or "MethodNotFound",
"TypeError" and "WorkerError" for the last three kinds.  A call frame
without an integer id cannot be answered: it is logged and dropped.  A
result whose JSON exceeds MAX_FRAME (1 GiB, the agent's limit) is
not_serializable.

Call semantics (those of affinetes 0.2.0's server, with the fixes noted)
-----------------------------------------------------------------------
1. If the module has "Actor", every call first makes sure an instance exists:
   Actor() is called with no arguments, once, under a lock, on a pool
   thread (the reference ran it on its event loop, in the main thread).  If
   it raises, the call fails with actor_init and the instance stays unset,
   so the next call tries again.
2. Resolution: an attribute of the Actor instance, then of the module, else
   not_found.  No underscore filter.
3. Coroutine functions (inspect.iscoroutinefunction, which sees through
   bound methods and functools.partial) run as tasks on one asyncio event
   loop that lives in a dedicated daemon thread, started (and asyncio
   imported) by the first call that needs it.  Anything else runs on a
   pool of up to ENVBOX_WORKER_THREADS threads (default 64: the reference's
   min(32, cpu_count + 4) lets only 6 evaluations that wait on an LLM run
   at once on a 2-core machine).  The loop's default executor
   (asyncio.to_thread, run_in_executor(None, ...)) is a ThreadPoolExecutor
   of as many threads (the reference shared one pool for both).  A sync
   function that returns an awaitable has it awaited on the loop (the
   reference tried to serialize the coroutine object).  The main thread only
   reads frames and dispatches; it never runs user code.
4. Any exception of the method is "raised", TimeoutError included (the
   reference misreported it as a server timeout of "Nones").
5. The result is converted as the reference does (None; dataclass ->
   asdict; to_dict(); model_dump(); dict(); else as is) and then encoded the
   way FastAPI's jsonable_encoder would (tuples, sets and generators ->
   lists, datetime/date/time -> isoformat, timedelta -> seconds, Decimal ->
   int or float, UUID and paths -> str, Enum -> value, bytes -> UTF-8 text,
   nested dataclasses and pydantic models -> dicts, other objects ->
   dict(obj) or vars(obj)).  An exception raised by a conversion method
   (to_dict() and the like) is "raised", as in the reference; a value
   that cannot be encoded (NaN or Infinity, a circular reference, an unknown
   object, invalid UTF-8) is "not_serializable".  Keys starting with "_sa"
   are kept (jsonable_encoder's SQLAlchemy filter is not reproduced).

Compatibility modules
---------------------
Environments written for affinetes 0.2.0 import affinetes.core.openenv,
affinetes.core.llm_chat and request_logger.  A meta-path finder placed at the
END of sys.meta_path serves small embedded stand-ins for them, so a real
installed package (or a file next to env.py) always wins.

Signals: SIGTERM makes the worker exit at once (status 0); a handler that
env.py installs replaces that.  The worker owns signal.set_wakeup_fd(), so
that a signal delivered to another thread still wakes the main thread up.

Exit status: 0 after EOF on fd 3 or SIGTERM, 3 after a load error, 2 when
started without fds 3 and 4.  Anything else comes from the environment
itself (os._exit, a fatal signal, the OOM killer).
"""

# Start-up time matters (it is part of every reset), so only what the ready
# frame needs is imported here.  asyncio (and concurrent.futures, logging,
# ssl with it) is imported by the first call that needs the event loop;
# traceback when an exception has to be formatted; inspect only for what the
# fast paths below leave to it.  The modules of rare result types
# (dataclasses, datetime, decimal, uuid, ...) are never imported: a value of
# such a type can only exist once its module is loaded, so it is looked up in
# sys.modules.
import collections
import collections.abc
import enum
import functools
import json
import os
import re
import select
import sys
import threading
import types
from keyword import iskeyword as _iskeyword  # loaded already, by collections

# The modules below are the C or frozen ones behind queue, signal and
# importlib.util, which take a while to import (signal builds enums; queue
# and importlib.util import more modules).  The fallbacks are for other
# interpreters than CPython.
try:
    from _queue import SimpleQueue
except ImportError:
    from queue import SimpleQueue
try:
    import _signal
except ImportError:
    import signal as _signal
try:
    from _frozen_importlib import module_from_spec, spec_from_loader
    from _frozen_importlib_external import spec_from_file_location
except ImportError:
    from importlib.util import module_from_spec, spec_from_file_location, spec_from_loader

REQUEST_FD = 3
RESPONSE_FD = 4
EXIT_LOAD_ERROR = 3
EXIT_USAGE = 2

# GET /methods "usage", byte for byte the reference's strings.
USAGE = {
    "sdk_style": 'POST /call {"method": "xxx", "args": [...], "kwargs": {...}}',
    "restful_style": 'POST /{method_name} {"param1": "val1", ...}',
}

# The largest frame the agent accepts (its MAX_FRAME); a bigger result is
# reported as not_serializable instead of being sent.
MAX_FRAME = 1 << 30
# Above this size a frame's header and body are written separately rather
# than concatenated, to avoid copying a large body.
_COALESCE_LIMIT = 1 << 16

_MISSING = object()
# Frames whose globals are this dict are the worker's own; they are left out
# of the tracebacks reported to the client.
_WORKER_GLOBALS = globals()


def _log(message):
    """Write a diagnostic line to the environment's log (stderr)."""
    try:
        sys.__stderr__.write("envbox-worker: %s\n" % message)
        sys.__stderr__.flush()
    except Exception:
        pass


def _flush_stdio():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


# ---------------------------------------------------------------------------
# The pipe to the agent
# ---------------------------------------------------------------------------


class Channel:
    """Frame I/O on the request and response fds."""

    def __init__(self, in_fd, out_fd):
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._write_lock = threading.Lock()
        # Set in a forked child, which must neither read nor write the pipes.
        self._detached = False
        self._poller = None  # created by the first _read()
        self._wake_fd = -1

    def frames(self):
        """Yield the body of each incoming frame; return at EOF.

        Frames are cut out of a buffer that is refilled with one os.read of
        whatever the pipe holds, so a burst of small frames costs one read.
        A truncated frame counts as EOF.  Must run on the main thread.
        """
        from_bytes = int.from_bytes
        buf = bytearray()
        start = 0  # where the next frame begins in buf
        while True:
            if len(buf) - start >= 4:
                size = from_bytes(buf[start : start + 4], "big")
                end = start + 4 + size
                if len(buf) >= end:
                    body = buf[start + 4 : end]
                    start = end
                    yield body
                    continue
                missing = end - len(buf)
            else:
                missing = 4 - (len(buf) - start)
            del buf[:start]
            start = 0
            chunk = self._read(max(missing, 1 << 16))
            if not chunk:
                return
            buf += chunk

    def _read(self, size):
        """One os.read of the request fd, waiting in poll().

        A signal is delivered to any thread that does not block it, often
        not to the main thread, and then no system call of the main thread
        is interrupted, so a Python handler (SIGTERM's) would only run at the
        next frame.  signal.set_wakeup_fd() makes every signal also write a
        byte to a pipe that this poll() watches: the main thread wakes up,
        runs Python code, and with it the pending handlers.
        """
        if self._poller is None:
            wake_r, wake_w = os.pipe()
            os.set_blocking(wake_r, False)
            os.set_blocking(wake_w, False)
            _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
            self._wake_fd = wake_r
            self._poller = select.poll()
            self._poller.register(self._in_fd, select.POLLIN)
            self._poller.register(wake_r, select.POLLIN)
        while True:
            events = self._poller.poll()
            for fd, _ in events:
                if fd == self._wake_fd:
                    try:
                        while os.read(fd, 512):
                            pass
                    except BlockingIOError:
                        pass
                else:  # the request fd: data, or EOF (POLLHUP)
                    try:
                        return os.read(self._in_fd, size)
                    except OSError as exc:  # closed under our feet: as good as EOF
                        _log("request pipe failed (%s)" % exc)
                        return b""

    def send(self, payload):
        """Send one frame whose body is the bytes `payload`.

        Called from any thread.  If the agent is gone, exits the process.
        """
        if self._detached:
            return
        header = len(payload).to_bytes(4, "big")
        with self._write_lock:
            if len(payload) <= _COALESCE_LIMIT:
                self._write_all(header + payload)
            else:
                self._write_all(header)
                self._write_all(payload)

    def _write_all(self, data):
        view = memoryview(data)
        write = os.write
        fd = self._out_fd
        try:
            while view:
                view = view[write(fd, view) :]
        except OSError as exc:
            # EPIPE (the agent closed its end) or EBADF: nobody listens.
            _log("response pipe failed (%s); exiting" % exc)
            _flush_stdio()
            os._exit(0)

    def detach_in_child(self):
        """os.register_at_fork hook: a forked child gives the pipes up."""
        self._detached = True
        for fd in (self._in_fd, self._out_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def _encode_control(obj):
    """Encode a frame the worker builds itself (everything but results).

    Strings in it may come from user objects (exception messages,
    docstrings); lone surrogates are replaced so the frame is valid UTF-8.
    """
    return _CONTROL_ENCODER.encode(obj).encode("utf-8", "replace")


_CONTROL_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=repr)


# ---------------------------------------------------------------------------
# Result serialization
# ---------------------------------------------------------------------------


class NotSerializable(Exception):
    """The result cannot be encoded as JSON; the message is the reason."""


# Types _to_plain returns unchanged without probing for conversion methods.
_PLAIN_TYPES = frozenset((dict, list, tuple, str, int, float, bool))


def _is_dataclass_instance(obj):
    """dataclasses.is_dataclass(obj) and not isinstance(obj, type)."""
    return not isinstance(obj, type) and hasattr(type(obj), "__dataclass_fields__")


def _asdict(obj):
    import dataclasses  # loaded already: obj is a dataclass instance

    return dataclasses.asdict(obj)


def _to_plain(result):
    """Step 1 of the reference's serialization (its _serialize_result)."""
    if result is None or type(result) in _PLAIN_TYPES:
        return result
    if _is_dataclass_instance(result):
        return _asdict(result)
    for method in ("to_dict", "model_dump", "dict"):
        convert = getattr(result, method, None)
        if callable(convert):
            return convert()
    return result


def _decode_bytes(value):
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TypeError("bytes value is not valid UTF-8 (%s)" % exc) from None


def _encode_decimal(value):
    # jsonable_encoder's decimal_encoder: an integral Decimal becomes an int.
    if value.is_finite() and value.as_tuple().exponent >= 0:
        return int(value)
    return float(value)


def _isoformat(value):
    return value.isoformat()


# jsonable_encoder's ENCODERS_BY_TYPE, for the types the standard library
# has.  Looked up along the value's MRO.
_ENCODERS_BY_TYPE = {
    bytes: _decode_bytes,
    bytearray: _decode_bytes,
    set: list,
    frozenset: list,
    collections.deque: list,
    types.GeneratorType: list,
    re.Pattern: lambda v: v.pattern,
}

# The rest of ENCODERS_BY_TYPE: module name -> {type name: encoder}.  An
# entry moves into _ENCODERS_BY_TYPE once its module is in sys.modules (a
# value of one of its types cannot exist before), so that the worker does
# not import these modules itself.
_LAZY_ENCODERS = {
    "datetime": {
        "date": _isoformat,
        "datetime": _isoformat,
        "time": _isoformat,
        "timedelta": lambda v: v.total_seconds(),
    },
    "decimal": {"Decimal": _encode_decimal},
    "uuid": {"UUID": str},
    "ipaddress": {
        "IPv4Address": str,
        "IPv4Interface": str,
        "IPv4Network": str,
        "IPv6Address": str,
        "IPv6Interface": str,
        "IPv6Network": str,
    },
}


def _encoders_by_type():
    """_ENCODERS_BY_TYPE, completed with the modules loaded by now."""
    if _LAZY_ENCODERS:
        for name in tuple(_LAZY_ENCODERS):
            module = sys.modules.get(name)
            if module is None:
                continue
            try:  # a module still being imported may lack a type yet
                found = {getattr(module, attr): encode for attr, encode in _LAZY_ENCODERS[name].items()}
            except (AttributeError, KeyError):  # KeyError: another thread moved it
                continue
            _ENCODERS_BY_TYPE.update(found)
            _LAZY_ENCODERS.pop(name, None)
    return _ENCODERS_BY_TYPE


def _jsonable_default(obj):
    """The json encoder's `default` hook, mimicking jsonable_encoder.

    It is called for every value json cannot encode natively (dict, list,
    tuple, str, int, float, bool and None are native) and returns a
    replacement that the encoder then encodes in turn, recursively.
    """
    cls = type(obj)
    if hasattr(cls, "model_dump") and hasattr(cls, "model_fields"):
        return obj.model_dump(mode="json")  # pydantic v2 model
    if hasattr(cls, "__fields__") and hasattr(cls, "parse_obj"):
        return obj.dict()  # pydantic v1 model
    if _is_dataclass_instance(obj):
        return _asdict(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    pathlib = sys.modules.get("pathlib")
    if pathlib is not None and isinstance(obj, pathlib.PurePath):
        return str(obj)
    encoders = _encoders_by_type()
    for base in cls.__mro__:
        encode = encoders.get(base)
        if encode is not None:
            return encode(obj)
    try:
        return dict(obj)
    except Exception:
        pass
    try:
        return vars(obj)
    except Exception:
        pass
    raise TypeError("Object of type %s is not JSON serializable" % cls.__name__)


_RESULT_ENCODER = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    separators=(",", ":"),
    default=_jsonable_default,
)


def encode_result(value):
    """Encode a _to_plain()'d result as compact UTF-8 JSON bytes.

    Raises NotSerializable with a human-readable reason.
    """
    if value is None:
        return b"null"
    try:
        text = _RESULT_ENCODER.encode(value)
    except RecursionError:
        raise NotSerializable("the value is nested too deeply") from None
    except ValueError as exc:
        message = _safe_str(exc)
        if message.startswith("Out of range float"):
            message = "NaN and Infinity are not valid JSON"
        elif message.startswith("Circular reference"):
            message = "it contains a circular reference"
        raise NotSerializable(message) from None
    except Exception as exc:  # TypeError from the hook, MemoryError, user code
        raise NotSerializable(_safe_str(exc) or type(exc).__name__) from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NotSerializable("a string is not valid Unicode (%s)" % exc) from None


# ---------------------------------------------------------------------------
# Exceptions
# ---------------------------------------------------------------------------


def _safe_str(obj):
    """str(obj), which must not raise even for a broken user __str__."""
    try:
        return str(obj)
    except Exception:
        return "<unprintable %s object>" % type(obj).__name__


def _is_plumbing(frame):
    """A frame of the worker itself or of the import machinery."""
    return frame.f_globals is _WORKER_GLOBALS or frame.f_code.co_filename.startswith("<frozen importlib")


def format_exception(exc):
    """The traceback text of exc, without the leading plumbing frames."""
    tb = exc.__traceback__
    while tb is not None and _is_plumbing(tb.tb_frame):
        tb = tb.tb_next
    try:
        import traceback

        return "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:
        return "%s: %s\n" % (type(exc).__name__, _safe_str(exc))


def _error_info(exc):
    """(type name, message, traceback) of an exception."""
    return type(exc).__name__, _safe_str(exc), format_exception(exc)


# ---------------------------------------------------------------------------
# Loading env.py and describing it
# ---------------------------------------------------------------------------


def load_env(path):
    """Import the environment file as module "user_env", like the reference."""
    spec = spec_from_file_location("user_env", path)
    if spec is None or spec.loader is None:
        raise ImportError("cannot load %r as a Python module" % path)
    module = module_from_spec(spec)
    sys.modules["user_env"] = module
    spec.loader.exec_module(module)
    return module


# /methods is described without importing inspect when the environment has
# not (a few ms of start-up): plain functions, the usual case, are handled
# here, and anything else by inspect.  The results are those of inspect on
# Python 3.8 to 3.13; the fast paths only take the cases where inspect's
# code is the same in all these versions, and leave the rest to inspect.

# inspect's code for functions is the same in 3.8 to 3.13; later versions
# are left to inspect itself.
_FAST_INTROSPECTION = sys.version_info < (3, 14)
_FunctionType = types.FunctionType
_MethodType = types.MethodType
_GenericAlias = getattr(types, "GenericAlias", ())  # 3.9+
_CO_VARARGS = 0x04
_CO_VARKEYWORDS = 0x08
_CO_COROUTINE = 0x80
_CO_ITERABLE_COROUTINE = 0x100


def _plain_function(obj):
    """Whether obj is a function without attributes (__wrapped__,
    __signature__, __text_signature__, __partialmethod__, ... would each
    change what inspect does)."""
    return type(obj) is _FunctionType and not obj.__dict__


def _format_annotation(annotation):
    """inspect.formatannotation(annotation).

    typing constructs and generic aliases (list[int]) are formatted
    differently from version to version: _Unsupported is raised for them.
    """
    if getattr(annotation, "__module__", None) == "typing":
        raise _Unsupported
    if isinstance(annotation, _GenericAlias):
        raise _Unsupported
    if isinstance(annotation, type):
        if annotation.__module__ in ("builtins", None):
            return annotation.__qualname__
        return annotation.__module__ + "." + annotation.__qualname__
    return repr(annotation)


class _Unsupported(Exception):
    """A fast path does not handle this object: ask inspect."""


def _function_signature(func):
    """str(inspect.signature(func)) for a _plain_function."""
    code = func.__code__
    annotations = func.__annotations__
    defaults = func.__defaults__
    kwdefaults = func.__kwdefaults__
    if type(annotations) is not dict or (kwdefaults is not None and type(kwdefaults) is not dict):
        raise _Unsupported
    names = code.co_varnames
    pos_count = code.co_argcount
    posonly_count = getattr(code, "co_posonlyargcount", 0)
    kwonly_count = code.co_kwonlyargcount
    flags = code.co_flags
    first_default = pos_count - (len(defaults) if defaults else 0)
    if first_default < 0:
        raise _Unsupported  # more __defaults__ than parameters: inspect has its ways
    parts = []

    def add(name, default, prefix=""):
        if type(name) is not str or not name.isidentifier() or _iskeyword(name):
            raise _Unsupported  # inspect renames or rejects these
        text = name
        annotation = annotations.get(name, _MISSING)
        if annotation is not _MISSING:
            text += ": " + _format_annotation(annotation)
        if default is not _MISSING:
            text += (" = " if annotation is not _MISSING else "=") + repr(default)
        parts.append(prefix + text)

    for index in range(pos_count):
        add(names[index], defaults[index - first_default] if index >= first_default else _MISSING)
        if index + 1 == posonly_count:
            parts.append("/")
    index = pos_count + kwonly_count
    if flags & _CO_VARARGS:
        add(names[index], _MISSING, "*")
        index += 1
    elif kwonly_count:
        parts.append("*")
    for name in names[pos_count : pos_count + kwonly_count]:
        add(name, kwdefaults.get(name, _MISSING) if kwdefaults is not None else _MISSING)
    if flags & _CO_VARKEYWORDS:
        add(names[index], _MISSING, "**")
    text = "(" + ", ".join(parts) + ")"
    if "return" in annotations:
        text += " -> " + _format_annotation(annotations["return"])
    return text


def _signature(obj):
    """str(inspect.signature(obj)); raises what inspect raises."""
    if _FAST_INTROSPECTION and _plain_function(obj):
        try:
            return _function_signature(obj)
        except Exception:
            pass  # _Unsupported, or an error inspect will report its own way
    import inspect

    return str(inspect.signature(obj))


def _function_doc(func):
    """inspect.getdoc(func) for a _plain_function, without the clean-up.

    A function without a docstring inherits the one of the attribute of the
    same name in the bases of the class it is defined in (inspect._finddoc).
    """
    doc = func.__doc__
    if doc is not None:
        return doc
    try:
        name = func.__name__
        owner = sys.modules.get(func.__module__)
        if owner is None:
            return None
        for part in func.__qualname__.split(".")[:-1]:
            owner = getattr(owner, part)
        if not isinstance(owner, type) or getattr(owner, name) is not func:
            return None
        for base in owner.__mro__:
            try:
                doc = getattr(base, name).__doc__
            except AttributeError:
                continue
            if doc is not None:
                return doc
    except (AttributeError, TypeError):
        pass
    return None


def _first_doc_line(obj):
    """The first line of inspect.getdoc(obj), or None."""
    try:
        if _FAST_INTROSPECTION and _plain_function(obj):
            doc = _function_doc(obj)
            if type(doc) is not str:
                return None
            # inspect.cleandoc() only removes whitespace at the start of
            # lines: the first non-blank line is the same without it.
            doc = doc.expandtabs()
        else:
            import inspect

            doc = inspect.getdoc(obj)
    except Exception:
        return None
    if not doc or not isinstance(doc, str) or not doc.strip():
        return None
    return doc.strip().splitlines()[0].strip()


def _method_entry(name, attr, source):
    try:
        signature = _signature(attr)
    except Exception:
        signature = "(...)"
    return {
        "name": name,
        "signature": signature,
        "source": source,
        "endpoint": "POST /" + name,
        "doc": _first_doc_line(attr),
    }


def describe_methods(module):
    """The body of GET /methods for a loaded module (see the docstring)."""
    entries = []
    if hasattr(module, "Actor"):
        actor_class = module.Actor
        for name in dir(actor_class):
            if name.startswith("_"):
                continue
            try:
                attr = getattr(actor_class, name)
            except Exception:
                continue  # the reference would fail the whole request
            if callable(attr):
                entries.append(_method_entry(name, attr, "Actor"))
    for name in dir(module):
        if name.startswith("_"):
            continue
        try:
            attr = getattr(module, name)
        except Exception:
            continue
        if callable(attr) and not isinstance(attr, type):  # inspect.isclass
            entries.append(_method_entry(name, attr, "module"))
    return {"methods": entries, "usage": dict(USAGE)}


# ---------------------------------------------------------------------------
# Running calls
# ---------------------------------------------------------------------------


def _iscoroutinefunction(obj):
    """inspect.iscoroutinefunction(obj).

    A plain function, or a method of one, is a coroutine function if its
    code says so in every version (3.12's markcoroutinefunction() sets an
    attribute, which makes the function not plain); inspect answers for
    anything else.
    """
    func = obj.__func__ if type(obj) is _MethodType else obj
    if _FAST_INTROSPECTION and _plain_function(func):
        return bool(func.__code__.co_flags & _CO_COROUTINE)
    import inspect

    return inspect.iscoroutinefunction(obj)


def _isawaitable(value):
    """inspect.isawaitable(value) (the same code in every version)."""
    return (
        isinstance(value, types.CoroutineType)
        or isinstance(value, types.GeneratorType)
        and bool(value.gi_code.co_flags & _CO_ITERABLE_COROUTINE)
        or isinstance(value, collections.abc.Awaitable)
    )


def _static_coroutine_hint(raw):
    """Whether a raw (undescribed) attribute is a coroutine function.

    Only plain functions and partials are inspected, so no user code runs;
    anything else is reported as not a coroutine function.
    """
    if isinstance(raw, (staticmethod, classmethod)):
        raw = raw.__func__
    if isinstance(raw, (types.FunctionType, functools.partial)):
        return _iscoroutinefunction(raw)
    return False


def _thread_count():
    """Threads for sync calls: ENVBOX_WORKER_THREADS, default 64."""
    try:
        return max(1, int(os.environ.get("ENVBOX_WORKER_THREADS", "64")))
    except ValueError:
        return 64


class ThreadPool:
    """A minimal thread pool: ThreadPoolExecutor without futures.

    concurrent.futures is not imported for it (with logging, it is a good
    part of the start-up time), and a call costs less.  As in
    ThreadPoolExecutor, a thread is started by submit() when no thread is
    idle, up to max_threads, and threads are never stopped.  The functions
    submitted report their own errors.
    """

    def __init__(self, max_threads, name_prefix):
        self._max_threads = max_threads
        self._name_prefix = name_prefix
        self._queue = SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        # Threads done with their last item and not yet given a new one.
        self._idle = 0

    def submit(self, fn, *args):
        with self._lock:
            if self._idle:
                self._idle -= 1
                spawn = False
            else:
                spawn = self._threads < self._max_threads
                if spawn:
                    self._threads += 1
                    name = "%s_%d" % (self._name_prefix, self._threads - 1)
        self._queue.put((fn, args))
        if spawn:
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self):
        get = self._queue.get
        lock = self._lock
        while True:
            fn, args = get()
            try:
                fn(*args)
            except BaseException as exc:  # a bug: keep the thread
                _log("pool thread: %s: %s" % (type(exc).__name__, _safe_str(exc)))
            del fn, args  # drop references to the call before waiting
            with lock:
                self._idle += 1


class Worker:
    """Dispatches calls to the thread pool and the event loop.

    Threads: the main thread reads frames and dispatches (never running user
    code), the pool threads run sync methods and Actor(), the loop thread
    runs coroutines.  Each call's result is serialized and sent by the
    thread that finished it.

    asyncio is imported, and the event loop and its thread started, by the
    first call that needs them (get_loop()).
    """

    def __init__(self, module, channel):
        self.module = module
        self.channel = channel
        self.has_actor = hasattr(module, "Actor")
        self._module_dict = vars(module)
        self.actor = None
        self._actor_lock = threading.Lock()
        self._threads = _thread_count()
        self.pool = ThreadPool(self._threads, "envbox-call")
        self.loop = None  # see get_loop()
        self.asyncio = None  # the module, once get_loop() has imported it
        self._loop_lock = threading.Lock()
        # Running async calls by id; touched only on the loop thread.
        self._tasks = {}

    def get_loop(self):
        """The event loop, started on first use.  Called from any thread."""
        loop = self.loop
        if loop is not None:
            return loop
        with self._loop_lock:
            if self.loop is None:
                import asyncio
                import concurrent.futures

                loop = asyncio.new_event_loop()
                # asyncio.to_thread() and run_in_executor(None) need a real
                # ThreadPoolExecutor; it is a pool of its own.
                loop.set_default_executor(
                    concurrent.futures.ThreadPoolExecutor(
                        max_workers=self._threads, thread_name_prefix="envbox-executor"
                    )
                )
                self.asyncio = asyncio
                threading.Thread(
                    target=self._run_loop, args=(asyncio, loop), name="envbox-asyncio", daemon=True
                ).start()
                self.loop = loop
            return self.loop

    @staticmethod
    def _run_loop(asyncio, loop):
        asyncio.set_event_loop(loop)
        loop.run_forever()

    # -- main thread ---------------------------------------------------------

    def serve(self):
        """Read and dispatch frames until the agent closes fd 3."""
        for body in self.channel.frames():
            try:
                self._dispatch(body)
            except Exception as exc:  # a worker bug: keep serving
                _log("dispatch failed: %s: %s" % (type(exc).__name__, _safe_str(exc)))

    def _dispatch(self, body):
        try:
            msg = json.loads(body)
            kind = msg["type"]
        except (ValueError, TypeError, KeyError) as exc:
            _log("ignoring malformed frame (%s)" % exc)
            return
        if kind == "call":
            self._dispatch_call(msg)
        elif kind == "cancel":
            loop = self.loop
            if loop is not None:  # else there is no task to cancel
                loop.call_soon_threadsafe(self._cancel_on_loop, msg.get("id"))
        else:
            _log("ignoring frame of unknown type %r" % (kind,))

    def _dispatch_call(self, msg):
        call_id = msg.get("id")
        name = msg.get("method")
        args = msg.get("args", [])
        kwargs = msg.get("kwargs", {})
        if type(call_id) is not int:
            _log("ignoring call frame without an integer id")
            return
        if not (isinstance(name, str) and isinstance(args, list) and isinstance(kwargs, dict)):
            self._reply_internal(call_id, "malformed call frame")
            return
        if self._looks_async(name):
            try:
                loop = self.get_loop()
            except BaseException as exc:  # asyncio failed to import, say
                reason = "cannot start the event loop: %s: %s" % (type(exc).__name__, _safe_str(exc))
                self._reply_internal(call_id, reason)
                return
            loop.call_soon_threadsafe(self._start_async, call_id, name, args, kwargs, None)
        else:
            self.pool.submit(self._run_sync, call_id, name, args, kwargs, None)

    def _looks_async(self, name):
        """Route a call without running user code on the main thread.

        Looks the name up in the class dicts of the Actor instance, then in
        the module dict, without invoking descriptors or __getattr__.  This
        is only a hint: the thread that resolves the call for real hands it
        over to the other side when the hint was wrong.  Until the Actor
        exists the answer is False: its creation runs on the pool.
        """
        actor = self.actor
        if actor is not None:
            for klass in type(actor).__mro__:
                raw = klass.__dict__.get(name, _MISSING)
                if raw is not _MISSING:
                    return _static_coroutine_hint(raw)
        elif self.has_actor:
            return False
        return _static_coroutine_hint(self._module_dict.get(name))

    # -- shared by the pool and the loop ---------------------------------------

    def _resolve(self, call_id, name):
        """The attribute a call runs: the Actor's, else the module's.

        When there is none, or looking it up raised (a property, a module
        __getattr__), replies and returns _MISSING.
        """
        try:
            actor = self.actor
            if actor is not None:
                func = getattr(actor, name, _MISSING)
                if func is not _MISSING:
                    return func
            func = getattr(self.module, name, _MISSING)
        except BaseException as exc:
            self._reply_raised(call_id, exc)
            return _MISSING
        if func is _MISSING:
            self._reply_not_found(call_id, name)
        return func

    def _ensure_actor(self, call_id):
        """Create the Actor if needed; on failure reply and return False."""
        with self._actor_lock:
            if self.actor is not None:
                return True
            try:
                self.actor = self.module.Actor()
                return True
            except BaseException as exc:
                failure = exc
        exc_type, message, tb = _error_info(failure)
        self._reply_error(
            call_id, 500, "Failed to initialize Actor: " + message, "actor_init", exc_type, message, tb
        )
        return False

    # -- pool threads ----------------------------------------------------------

    def _run_sync(self, call_id, name, args, kwargs, func):
        """Run a call on a pool thread; `func` is None if not yet resolved."""
        try:
            self._run_sync_inner(call_id, name, args, kwargs, func)
        except BaseException as exc:  # a worker bug; the call must still be answered
            self._reply_internal(call_id, "%s: %s" % (type(exc).__name__, _safe_str(exc)))

    def _run_sync_inner(self, call_id, name, args, kwargs, func):
        if func is None:
            if self.actor is None and self.has_actor and not self._ensure_actor(call_id):
                return
            func = self._resolve(call_id, name)
            if func is _MISSING:
                return
            if _iscoroutinefunction(func):
                self.get_loop().call_soon_threadsafe(self._start_async, call_id, name, args, kwargs, func)
                return
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._reply_raised(call_id, exc)
            return
        if result is not None and _isawaitable(result):
            self.get_loop().call_soon_threadsafe(self._track, call_id, name, result)
            return
        self._reply_value(call_id, name, result)

    # -- loop thread -----------------------------------------------------------

    def _start_async(self, call_id, name, args, kwargs, func):
        """Start a call as a task; `func` is None if not yet resolved."""
        try:
            self._start_async_inner(call_id, name, args, kwargs, func)
        except BaseException as exc:  # a worker bug; the call must still be answered
            self._reply_internal(call_id, "%s: %s" % (type(exc).__name__, _safe_str(exc)))

    def _start_async_inner(self, call_id, name, args, kwargs, func):
        if func is None:
            func = self._resolve(call_id, name)
            if func is _MISSING:
                return
            if not _iscoroutinefunction(func):
                self.pool.submit(self._run_sync, call_id, name, args, kwargs, func)
                return
        try:
            awaitable = func(*args, **kwargs)
        except BaseException as exc:
            self._reply_raised(call_id, exc)
            return
        self._track(call_id, name, awaitable)

    def _track(self, call_id, name, awaitable):
        try:
            task = self.asyncio.ensure_future(awaitable, loop=self.loop)
        except BaseException as exc:
            self._reply_raised(call_id, exc)
            return
        self._tasks[call_id] = task
        task.add_done_callback(functools.partial(self._task_done, call_id, name))

    def _task_done(self, call_id, name, task):
        if self._tasks.get(call_id) is task:
            del self._tasks[call_id]
        elif task.cancelled():
            return  # _cancel_on_loop took it out: cancelled on request, no frame
        try:
            if task.cancelled():
                # Cancelled by something else than the agent (user code
                # cancelling what it awaits, say): the call still needs an answer.
                try:
                    task.result()
                except self.asyncio.CancelledError as cancelled:
                    exc = cancelled
            else:
                exc = task.exception()
            if exc is not None:
                self._reply_raised(call_id, exc)
            else:
                self._reply_value(call_id, name, task.result())
        except BaseException as exc:
            self._reply_internal(call_id, "%s: %s" % (type(exc).__name__, _safe_str(exc)))

    def _cancel_on_loop(self, call_id):
        task = self._tasks.pop(call_id, None)
        if task is not None:
            task.cancel()

    # -- replies (any thread) --------------------------------------------------

    def _reply_value(self, call_id, name, value):
        try:
            value = _to_plain(value)
        except BaseException as exc:
            self._reply_raised(call_id, exc)
            return
        try:
            payload = encode_result(value)
            if len(payload) > MAX_FRAME - 64:
                raise NotSerializable(
                    "it is %d bytes of JSON, over the %d MiB frame limit" % (len(payload), MAX_FRAME >> 20)
                )
        except NotSerializable as exc:
            reason = str(exc)
            self._reply_error(
                call_id,
                500,
                "Result of method '%s' is not JSON-serializable: %s" % (name, reason),
                "not_serializable",
                "TypeError",
                reason,
            )
            return
        self.channel.send(b'{"type":"result","id":%d,"ok":true,"result":%b}' % (call_id, payload))

    def _reply_raised(self, call_id, exc):
        exc_type, message, tb = _error_info(exc)
        self._reply_error(call_id, 500, "%s\n%s" % (message, tb), "raised", exc_type, message, tb)

    def _reply_not_found(self, call_id, name):
        detail = "Method not found: " + name
        self._reply_error(call_id, 404, detail, "not_found", "MethodNotFound", detail)

    def _reply_internal(self, call_id, reason):
        _log("call %s: %s" % (call_id, reason))
        detail = "envbox worker error: " + reason
        self._reply_error(call_id, 500, detail, "internal", "WorkerError", detail)

    def _reply_error(self, call_id, status, detail, kind, exc_type, message, tb=""):
        self.channel.send(
            _encode_control(
                {
                    "type": "result",
                    "id": call_id,
                    "ok": False,
                    "status": status,
                    "detail": detail,
                    "error": {"type": exc_type, "message": message, "traceback": tb, "kind": kind},
                }
            )
        )


# ---------------------------------------------------------------------------
# Compatibility modules for environments written for affinetes 0.2.0
# ---------------------------------------------------------------------------

_AFFINETES_INIT = '''\
"""envbox stand-in for the affinetes package inside a sandbox.

Only the in-environment helpers are provided: affinetes.core.openenv and
affinetes.core.llm_chat.  Install the real affinetes package in the image
to get everything else.
"""

__version__ = "0.1.0"  # what the affinetes 0.2.0 wheel itself reports


def __getattr__(name):
    raise AttributeError(
        "module 'affinetes' has no attribute %r (envbox provides only "
        "affinetes.core.openenv and affinetes.core.llm_chat inside a sandbox)" % name
    )
'''

_AFFINETES_CORE_INIT = '''\
"""envbox stand-in for affinetes.core: the in-environment helpers only."""

_EXPORTS = {
    "OpenEnvResponse": "openenv",
    "llm_chat": "llm_chat",
    "ChatResult": "llm_chat",
    "remove_think_tags": "llm_chat",
    "create_client": "llm_chat",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    submodule = _EXPORTS.get(name)
    if submodule is None:
        raise AttributeError("module 'affinetes.core' has no attribute %r" % name)
    import importlib

    return getattr(importlib.import_module("affinetes.core." + submodule), name)
'''

_AFFINETES_OPENENV = '''\
"""OpenEnv shared protocol models (as in affinetes 0.2.0)."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class OpenEnvResponse:
    """OpenEnv unified response for reset/step/state."""

    observation: str
    reward: float = 0.0
    done: bool = False
    truncated: bool = False
    episode_id: Optional[str] = None
    info: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """Convert to dict for JSON serialization."""
        return {
            "observation": self.observation,
            "reward": self.reward,
            "done": self.done,
            "truncated": self.truncated,
            "episode_id": self.episode_id,
            "info": self.info,
        }
'''

_AFFINETES_LLM_CHAT = '''\
"""envbox fallback for affinetes.core.llm_chat (standard library only).

Served only when the real affinetes package is not installed.  The real
helper drives the openai client with streaming, per-chunk timeouts and
retries.  This stand-in accepts the same arguments and returns the same
ChatResult, but it sends one non-streaming POST {base_url}/chat/completions
with urllib, in a thread: `stream`, `chunk_timeout` and `max_chunks` are
accepted and ignored, and `timeout` applies to each socket operation.
Retries on timeouts, connection errors and 5xx replies work like the real
ones.  Install affinetes and openai in the image for the real behaviour.
"""

import asyncio
import json
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class ChatResult:
    """Result of an LLM chat completion.

    Iterating yields (content, usage), as the real class does.
    """

    content: Optional[str] = None
    reasoning: Optional[str] = None
    usage: Optional[Dict[str, Any]] = None

    def __iter__(self):
        return iter((self.content, self.usage))


def remove_think_tags(text: str) -> str:
    """Remove <think>/<thinking> blocks and their content."""
    cleaned = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL | re.IGNORECASE)
    cleaned = re.sub(r"<thinking>.*?</thinking>", "", cleaned, flags=re.DOTALL | re.IGNORECASE)
    if "</think>" in cleaned:
        cleaned = cleaned.split("</think>")[-1]
    if "</thinking>" in cleaned:
        cleaned = cleaned.split("</thinking>")[-1]
    for tag in ("<think>", "<thinking>"):
        match = re.search(tag, cleaned, flags=re.IGNORECASE)
        if match:
            cleaned = cleaned[: match.start()]
    cleaned = re.sub(r"\\n\\s*\\n\\s*\\n", "\\n\\n", cleaned)
    return cleaned.strip()


def create_client(base_url, api_key, *, connect_timeout=10.0, read_timeout=20.0,
                  write_timeout=10.0, pool_timeout=10.0):
    """Create an openai.AsyncOpenAI client (needs the openai package)."""
    try:
        import httpx
        import openai
    except ImportError as exc:
        raise ImportError("create_client needs the openai and httpx packages") from exc
    return openai.AsyncOpenAI(
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout,
                              write=write_timeout, pool=pool_timeout),
        max_retries=0,
    )


class _Retryable(Exception):
    """A transient failure (timeout, connection error, 5xx)."""


def _post_json(url, api_key, body, timeout):
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + api_key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        message = exc.read().decode("utf-8", "replace")
        if exc.code >= 500:
            raise _Retryable("HTTP %d: %s" % (exc.code, message)) from None
        if exc.code == 400:
            if "is longer than the model" in message or "context_length_exceeded" in message:
                raise ValueError("Context length exceeded: " + message) from None
            raise ValueError("API error: " + message) from None
        raise ValueError("API error %d: %s" % (exc.code, message)) from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
        raise _Retryable(str(exc)) from None


async def llm_chat(*, messages, model, base_url, api_key, timeout=600, chunk_timeout=30.0,
                   temperature=None, seed=None, stream=True, max_chunks=32000,
                   max_retries=0, strip_think_tags=False, client=None):
    """OpenAI-compatible chat completion; returns a ChatResult."""
    if client is not None:  # reuse the endpoint of a caller's openai client
        base_url = str(getattr(client, "base_url", None) or base_url)
        api_key = getattr(client, "api_key", None) or api_key
    body = {"model": model, "messages": messages, "stream": False}
    if temperature is not None:
        body["temperature"] = temperature
    if seed is not None:
        body["seed"] = seed
    url = base_url.rstrip("/") + "/chat/completions"
    loop = asyncio.get_running_loop()
    attempts = max_retries + 1
    last_exc = None
    for attempt in range(attempts):
        try:
            reply = await loop.run_in_executor(None, _post_json, url, api_key, body, timeout)
        except _Retryable as exc:
            last_exc = exc
            if attempt < attempts - 1:
                await asyncio.sleep(min(2 ** attempt, 32))
            continue
        usage = reply.get("usage")
        choices = reply.get("choices") or []
        if not choices:
            return ChatResult(content=None, reasoning=None, usage=usage)
        message = choices[0].get("message") or {}
        content = (message.get("content") or "").strip() or None
        if strip_think_tags and content:
            content = remove_think_tags(content) or None
        reasoning = message.get("reasoning_content") or message.get("reasoning") or None
        return ChatResult(content=content, reasoning=reasoning, usage=usage)
    raise ValueError("API call failed after %d attempts: %s" % (attempts, last_exc))
'''

_REQUEST_LOGGER = '''\
"""envbox fallback for the request_logger module of affinetes images.

Same API as the structlog-based original (RequestLogger, log_event,
get_logger, base_logger), built on the standard logging module.  Lines go to
stdout in a format close to structlog's console renderer.
"""

import logging
import re
import sys
import time
from contextvars import ContextVar

_logger = logging.getLogger("affinetes")
if not _logger.handlers:
    _handler = logging.StreamHandler(sys.stdout)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(_handler)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False


def _render(level, event, fields):
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + ".%06d" % int(now % 1 * 1e6)
    parts = ["%s [%-9s] %-30s" % (stamp, level, event)]
    parts.extend("%s=%s" % (key, value if isinstance(value, str) else repr(value))
                 for key, value in sorted(fields.items()))
    return " ".join(parts)


class BoundLogger:
    """A logger carrying key-value context, like a structlog bound logger."""

    def __init__(self, context=None):
        self._context = dict(context or {})

    def bind(self, **values):
        return BoundLogger({**self._context, **values})

    def _log(self, level, name, event, fields):
        if _logger.isEnabledFor(level):
            _logger.log(level, _render(name, str(event), {**self._context, **fields}))

    def debug(self, event, **fields):
        self._log(logging.DEBUG, "debug", event, fields)

    def info(self, event, **fields):
        self._log(logging.INFO, "info", event, fields)

    msg = info

    def warning(self, event, **fields):
        self._log(logging.WARNING, "warning", event, fields)

    warn = warning

    def error(self, event, **fields):
        self._log(logging.ERROR, "error", event, fields)

    def exception(self, event, **fields):
        self._log(logging.ERROR, "error", event, fields)

    def critical(self, event, **fields):
        self._log(logging.CRITICAL, "critical", event, fields)


base_logger = BoundLogger()

_request_logger = ContextVar("request_logger", default=None)


class RequestLogger:
    """Context manager for request-scoped structured logging."""

    def __init__(self, **context):
        self.context = context
        self.start_time = time.time()
        if "base_url" in context:
            self.context["miner"] = self._extract_miner_slug(context["base_url"])
        self.request_context = self._build_context_string()
        self.logger = base_logger.bind(req_ctx=self.request_context)

    def _extract_miner_slug(self, base_url):
        base_url = str(base_url)
        slug_match = re.search(r"https?://([^./]+)\\.chutes\\.ai", base_url)
        if slug_match:
            return slug_match.group(1)
        hostname_match = re.search(r"https?://([^/]+)", base_url)
        return hostname_match.group(1)[:40] if hostname_match else base_url[:40]

    def _build_context_string(self):
        field_order = ["task_id", "type", "seed", "miner", "model", "game", "trace"]
        parts = []
        for field in field_order:
            if field == "type" and "task_type" in self.context:
                parts.append("type:%s" % self.context["task_type"])
            elif field in self.context and self.context[field] is not None:
                parts.append("%s:%s" % (field, self.context[field]))
        for key, value in self.context.items():
            if key not in field_order and key not in ("task_type", "base_url") and value is not None:
                parts.append("%s:%s" % (key, value))
        return "|".join(parts)

    def log(self, event, level="info", **details):
        details["elapsed_ms"] = int((time.time() - self.start_time) * 1000)
        getattr(self.logger, level, self.logger.info)(event, **details)

    def __enter__(self):
        self.token = _request_logger.set(self)
        self.log("request_start")
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        if exc_type:
            self.log("request_error", level="error", error=str(exc_val), error_type=exc_type.__name__)
        _request_logger.reset(self.token)


def log_event(event, level="info", **details):
    """Log through the current request logger, or the base logger."""
    current = _request_logger.get()
    if current is not None:
        current.log(event, level=level, **details)
    else:
        getattr(base_logger, level, base_logger.info)(event, **details)


def get_logger():
    """The current request's logger, or the base logger."""
    current = _request_logger.get()
    return current.logger if current is not None else base_logger
'''

# Module name -> (source, is_package).
_SHIM_MODULES = {
    "affinetes": (_AFFINETES_INIT, True),
    "affinetes.core": (_AFFINETES_CORE_INIT, True),
    "affinetes.core.openenv": (_AFFINETES_OPENENV, False),
    "affinetes.core.llm_chat": (_AFFINETES_LLM_CHAT, False),
    "request_logger": (_REQUEST_LOGGER, False),
}


class ShimImporter:
    """Serves the embedded compatibility modules, from memory.

    Installed last on sys.meta_path, so it only answers for names no other
    finder has.  A submodule is served only below a package this importer
    created, never inside a real affinetes.  get_source() lets tracebacks and
    inspect show the embedded source.
    """

    def find_spec(self, fullname, path=None, target=None):
        entry = _SHIM_MODULES.get(fullname)
        if entry is None:
            return None
        parent = fullname.rpartition(".")[0]
        if parent and not getattr(sys.modules.get(parent), "__envbox_shim__", False):
            return None
        spec = spec_from_loader(
            fullname, self, origin=self._filename(fullname), is_package=entry[1]
        )
        spec.has_location = True  # sets __file__, so inspect.getsource() works too
        return spec

    @staticmethod
    def _filename(fullname):
        suffix = "/__init__.py" if _SHIM_MODULES[fullname][1] else ".py"
        return "<envbox-shim>/" + fullname.replace(".", "/") + suffix

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module):
        name = module.__name__
        module.__envbox_shim__ = True
        code = compile(_SHIM_MODULES[name][0], self._filename(name), "exec", dont_inherit=True)
        exec(code, module.__dict__)

    def get_source(self, fullname):
        return _SHIM_MODULES[fullname][0]

    def invalidate_caches(self):
        pass  # what importlib.abc.MetaPathFinder provides (not imported: it is slow)


# ---------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------


def _on_sigterm(signum, frame):
    _flush_stdio()
    os._exit(0)


def _reset_signals_in_child():
    # A forked child should die from SIGTERM like any process, not exit 0,
    # and its signals must not wake the parent's reader up.
    try:
        if _signal.getsignal(_signal.SIGTERM) is _on_sigterm:
            _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
        _signal.set_wakeup_fd(-1)
    except Exception:
        pass


def main(argv):
    env_path = os.path.abspath(argv[1] if len(argv) > 1 else "/app/env.py")
    try:
        for fd in (REQUEST_FD, RESPONSE_FD):
            os.set_inheritable(fd, False)
    except OSError as exc:
        _log("fds %d and %d must be the agent's pipes (%s)" % (REQUEST_FD, RESPONSE_FD, exc))
        os._exit(EXIT_USAGE)

    channel = Channel(REQUEST_FD, RESPONSE_FD)
    os.register_at_fork(after_in_child=channel.detach_in_child)
    os.register_at_fork(after_in_child=_reset_signals_in_child)
    # Installed before env.py runs, so a handler the environment installs wins.
    _signal.signal(_signal.SIGTERM, _on_sigterm)

    # Look like `python3 /app/env.py`: the environment directory first on
    # sys.path (replacing the "" that -c puts there), no stray arguments.
    env_dir = os.path.dirname(env_path)
    if sys.path and sys.path[0] == "":
        sys.path[0] = env_dir
    else:
        sys.path.insert(0, env_dir)
    sys.argv = [env_path]
    sys.meta_path.append(ShimImporter())

    try:
        module = load_env(env_path)
        methods = describe_methods(module)
    except BaseException as exc:
        exc_type, message, tb = _error_info(exc)
        _log("loading %s failed:\n%s" % (env_path, tb.rstrip()))
        channel.send(
            _encode_control(
                {"type": "load_error", "error": {"type": exc_type, "message": message, "traceback": tb}}
            )
        )
        _flush_stdio()
        os._exit(EXIT_LOAD_ERROR)

    routes = list(dict.fromkeys(entry["name"] for entry in methods["methods"]))
    worker = Worker(module, channel)
    channel.send(_encode_control({"type": "ready", "methods": methods, "routes": routes, "pid": os.getpid()}))
    worker.serve()
    # EOF: the agent is gone.  os._exit, because pool threads may be stuck in
    # user code and a normal interpreter exit would wait for them.
    _flush_stdio()
    os._exit(0)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except BaseException:
        import traceback

        traceback.print_exc()
        _flush_stdio()
        os._exit(1)
