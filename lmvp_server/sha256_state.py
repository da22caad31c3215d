"""A running sha256 whose state can be saved with what it hashed and continued by another
process: what lets an upload that goes straight to its blob's key in an object store
(`lmvp_server.upload_staging_s3`) change workers mid-way, where the bytes already sent cannot be
read back (the parts of a multipart upload in progress are not readable in S3).

hashlib's state cannot be saved. This uses OpenSSL's SHA-256 through its documented low-level
interface (`SHA256_Init`/`SHA256_Update`/`SHA256_Final` on a `SHA256_CTX`, whose layout is
public in `<openssl/sha.h>` and has not changed since OpenSSL 0.9.8), from the libcrypto that
Python's own hashlib uses, at the same speed. A saved state carries a format tag, and a restored
one must account for exactly the bytes the caller says it covers (the bit count inside the
state), so a state of another upload, offset or format is refused (`StateMismatch`), never
continued. `available()` is False (and the caller keeps a path that needs no saved state) if
libcrypto cannot be loaded or its results differ from hashlib's on a self-test at first use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
from typing import Any

# The tag a saved state starts with: the layout of OpenSSL's SHA256_CTX (112 bytes).
_TAG = b"ossl-sha256-v1:"


class StateMismatch(ValueError):
    """A saved sha256 state that is not one of this format, or does not cover the bytes it is
    said to cover."""


class _Ctx(ctypes.Structure):
    _fields_ = (
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    )


_STATE_SIZE = ctypes.sizeof(_Ctx)


@functools.cache
def _library() -> Any | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)  # a CDLL call releases the GIL while it hashes
        lib.SHA256_Init.argtypes = [ctypes.POINTER(_Ctx)]
        lib.SHA256_Update.argtypes = [ctypes.POINTER(_Ctx), ctypes.c_void_p, ctypes.c_size_t]
        lib.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Ctx)]
    except (OSError, AttributeError):
        return None
    return lib


class SavableSha256:
    """sha256, fed with `update`, that can `save` its state and be `restore`d from it."""

    def __init__(self) -> None:
        lib = _library()
        if lib is None:
            raise RuntimeError("libcrypto's SHA256 functions cannot be loaded")
        self._lib = lib
        self._ctx = _Ctx()
        lib.SHA256_Init(ctypes.byref(self._ctx))

    @property
    def hashed(self) -> int:
        """How many bytes were fed so far."""
        return int((self._ctx.Nh << 32) | self._ctx.Nl) // 8

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if isinstance(data, bytes):  # ctypes passes a bytes object's buffer, not a copy
            self._lib.SHA256_Update(ctypes.byref(self._ctx), data, len(data))
            return
        view = memoryview(data).cast("B")
        if view.readonly:
            self.update(view.tobytes())
            return
        buffer = (ctypes.c_char * len(view)).from_buffer(view)
        try:
            self._lib.SHA256_Update(ctypes.byref(self._ctx), buffer, len(view))
        finally:
            del buffer
            view.release()

    def copy(self) -> SavableSha256:
        twin = SavableSha256.__new__(SavableSha256)
        twin._lib = self._lib
        twin._ctx = _Ctx.from_buffer_copy(bytes(self._ctx))
        return twin

    def digest(self) -> bytes:
        ctx = _Ctx.from_buffer_copy(bytes(self._ctx))
        out = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(out, ctypes.byref(ctx))
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()

    def save(self) -> bytes:
        """The state, to be continued by `restore` (in any process)."""
        return _TAG + bytes(self._ctx)

    @classmethod
    def restore(cls, state: bytes, hashed: int) -> SavableSha256:
        """The hasher saved as `state`, which must have been fed exactly `hashed` bytes.
        Raises `StateMismatch`."""
        if not state.startswith(_TAG) or len(state) != len(_TAG) + _STATE_SIZE:
            raise StateMismatch("not a saved sha256 state of this format")
        hasher = cls()
        hasher._ctx = _Ctx.from_buffer_copy(state[len(_TAG) :])
        if hasher.hashed != hashed or hasher._ctx.md_len != 32 or hasher._ctx.num >= 64:
            raise StateMismatch(
                f"the saved sha256 state covers {hasher.hashed} bytes, not {hashed}"
            )
        return hasher


@functools.cache
def available() -> bool:
    """Whether sha256 states can be saved here: libcrypto loads and agrees with hashlib."""
    if _library() is None:
        return False
    sample = bytes(range(256)) * 1000 + b"tail"
    try:
        first = SavableSha256()
        first.update(sample[:100_003])
        second = SavableSha256.restore(first.save(), 100_003)
        second.update(bytearray(sample[100_003:]))
        return second.hexdigest() == hashlib.sha256(sample).hexdigest()
    except (OSError, StateMismatch, RuntimeError):
        return False


__all__ = ["SavableSha256", "StateMismatch", "available"]
