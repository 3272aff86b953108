"""Streaming reader of ScanNet's ``.sens`` RGB-D recordings (format version 4).

The layout, all little-endian, as written by ScanNet's SensReader (``SensorData``)::

    header   uint32  version                       (4)
             uint64  n, then n bytes sensor name
             4 x 16 float32  intrinsic_color, extrinsic_color, intrinsic_depth, extrinsic_depth
                             (4x4 matrices, row by row)
             int32   color_compression_type        (-1 unknown, 0 raw, 1 png, 2 jpeg)
             int32   depth_compression_type        (-1 unknown, 0 raw_ushort, 1 zlib_ushort, 2 occi_ushort)
             uint32  color_width, color_height, depth_width, depth_height
             float32 depth_shift                   (depth value per metre, 1000 for millimetres)
             uint64  num_frames
    frame    16 float32  camera_to_world (4x4, row by row; -inf where tracking was lost)
    (x num_frames)       uint64 timestamp_color, timestamp_depth, color_size_bytes, depth_size_bytes
             color_size_bytes bytes of colour image, depth_size_bytes bytes of depth image

    imu      uint64  num_imu_frames, then num_imu_frames x 128 bytes (5 x 3 float64 rotation rate,
                     acceleration, magnetic field, attitude, gravity; uint64 timestamp)

The IMU block is not read. A recording whose header claims more frames than it holds (the IMU block follows
fewer frames) is recognised where the next frame should start, ``"<file>: header: N frames, file: M"``,
rather than read as a frame header.

``SensFile`` reads only the header when opened. Iterating it reads each frame's 96-byte header and
seeks over the image payloads; a ``SensFrame`` reads (``color_bytes``/``depth_bytes``) and decodes
(``color``/``depth``) its payload only when asked, so a recording is never held in memory and frames
that an exporter skips cost one small read.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError, bad

SENS_VERSION = 4
COLOR_COMPRESSION = {0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {0: "raw_ushort", 1: "zlib_ushort"}  # 2 (occi_ushort) is not used by ScanNet v2

_MAX_SENSOR_NAME = 1 << 16  # a longer name means the file is not a .sens file
_HEAD = struct.Struct("<IQ")  # version, sensor-name length
_CAMERA = struct.Struct("<64f2i4IfQ")  # 4 matrices, compression types, image sizes, depth shift, num_frames
_FRAME = struct.Struct("<16f4Q")  # camera_to_world, timestamps, payload sizes (96 bytes)
_IMU_COUNT, IMU_FRAME_SIZE = struct.Struct("<Q"), 5 * 3 * 8 + 8


class SensDecodeError(InputError):
    """One frame's colour or depth payload does not decode; the file itself is still readable."""

    def __init__(self, message: str, frame: int):
        super().__init__(message)
        self.frame = frame


class SensFrame:
    """One frame of a ``SensFile``: pose and timestamps, payloads read and decoded on request."""

    __slots__ = ("_sens", "index", "camera_to_world", "timestamp_color", "timestamp_depth",
                 "color_size_bytes", "depth_size_bytes", "_color_offset")

    def __init__(self, sens: "SensFile", index: int, camera_to_world: np.ndarray, timestamp_color: int,
                 timestamp_depth: int, color_size_bytes: int, depth_size_bytes: int, color_offset: int):
        self._sens = sens
        self.index = index
        self.camera_to_world = camera_to_world  # (4, 4) float32
        self.timestamp_color = timestamp_color
        self.timestamp_depth = timestamp_depth
        self.color_size_bytes = color_size_bytes
        self.depth_size_bytes = depth_size_bytes
        self._color_offset = color_offset

    def color_bytes(self) -> bytes:
        """The colour payload as stored (a complete JPEG file when the compression type is 2)."""
        return self._sens._read_at(self._color_offset, self.color_size_bytes)

    def depth_bytes(self) -> bytes:
        """The depth payload as stored (zlib-compressed uint16 when the compression type is 1)."""
        return self._sens._read_at(self._color_offset + self.color_size_bytes, self.depth_size_bytes)

    def color(self) -> np.ndarray:
        """Decoded colour image, (color_height, color_width, 3) uint8."""
        s = self._sens
        h, w = s.color_height, s.color_width
        data = self.color_bytes()
        if s.color_compression_type == 0:
            if len(data) != h * w * 3:
                raise self._error("colour", f"{h * w * 3} bytes of raw RGB ({w}x{h})", f"{len(data)} bytes")
            return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3).copy()
        try:
            with Image.open(io.BytesIO(data)) as img:
                a = np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise self._error("colour", f"a {COLOR_COMPRESSION[s.color_compression_type]} image",
                              f"undecodable data ({e})") from None
        if a.shape != (h, w, 3):
            raise self._error("colour", f"a {w}x{h} RGB image", f"shape {a.shape}")
        return a

    def check_color(self) -> bytes:
        """The colour payload as stored, once it is known to decode to a ``color_width x color_height`` image.

        A JPEG is decoded at 1/8 scale (libjpeg still reads every entropy-coded block, so a truncated stream or a
        damaged header is found at a fraction of a full decode's cost); raw and PNG payloads are decoded fully.
        """
        s = self._sens
        data = self.color_bytes()
        if s.color_compression_type != 2:
            self.color()
            return data
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "JPEG" or img.size != (s.color_width, s.color_height):
                    raise self._error("colour", f"a {s.color_width}x{s.color_height} JPEG image",
                                      f"a {img.size[0]}x{img.size[1]} {img.format} image")
                img.draft("RGB", (max(s.color_width // 8, 1), max(s.color_height // 8, 1)))
                img.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise self._error("colour", "a jpeg image", f"undecodable data ({e})") from None
        return data

    def depth(self) -> np.ndarray:
        """Decoded depth image, (depth_height, depth_width) uint16 (divide by ``depth_shift`` for metres)."""
        s = self._sens
        h, w = s.depth_height, s.depth_width
        data = self.depth_bytes()
        if s.depth_compression_type == 1:
            try:
                data = zlib.decompress(data)
            except zlib.error as e:
                raise self._error("depth", "zlib-compressed uint16 data", f"undecodable data ({e})") from None
        if len(data) != h * w * 2:
            raise self._error("depth", f"{h * w * 2} bytes of uint16 depth ({w}x{h})", f"{len(data)} bytes")
        return np.frombuffer(data, dtype="<u2").reshape(h, w).astype(np.uint16)

    def _error(self, what: str, expected: str, got: str) -> SensDecodeError:
        return SensDecodeError(f"{self._sens.path}: frame {self.index}: {what}: expected {expected}, got {got}",
                               self.index)


class SensFile:
    """A ``.sens`` recording opened for streaming; use as a context manager or call ``close()``.

    Header attributes: ``version``, ``sensor_name``, ``intrinsic_color``, ``extrinsic_color``,
    ``intrinsic_depth``, ``extrinsic_depth`` ((4, 4) float32), ``color_compression_type``,
    ``depth_compression_type``, ``color_width``, ``color_height``, ``depth_width``, ``depth_height``,
    ``depth_shift``, ``num_frames``. Iterating yields the ``SensFrame``\\ s in order.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._f: BinaryIO = open(self.path, "rb")
        except FileNotFoundError:
            raise InputError(f"{self.path}: file not found") from None
        except OSError as e:
            raise InputError(f"{self.path}: cannot open ({e.strerror})") from None
        try:
            self._size = os.fstat(self._f.fileno()).st_size
            self._read_header()
        except BaseException:
            self._f.close()
            raise

    # ------------------------------------------------------------ header

    def _read_exact(self, n: int, field: str) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            raise bad(self.path, field, f"{n} bytes", f"{len(data)} bytes (file truncated)")
        return data

    def _read_header(self) -> None:
        self.version, name_len = _HEAD.unpack(self._read_exact(_HEAD.size, "header"))
        if self.version != SENS_VERSION:
            raise InputError(f"{self.path}: version: expected {SENS_VERSION}, got {self.version}")
        if name_len > _MAX_SENSOR_NAME:
            raise bad(self.path, "sensor name length", f"at most {_MAX_SENSOR_NAME} bytes", name_len)
        self.sensor_name = self._read_exact(name_len, "sensor name").decode("utf-8", errors="replace")
        v = _CAMERA.unpack(self._read_exact(_CAMERA.size, "header"))
        mats = np.array(v[:64], dtype=np.float32).reshape(4, 4, 4)
        self.intrinsic_color, self.extrinsic_color, self.intrinsic_depth, self.extrinsic_depth = mats
        (self.color_compression_type, self.depth_compression_type, self.color_width, self.color_height,
         self.depth_width, self.depth_height, self.depth_shift, self.num_frames) = v[64:]
        if self.color_compression_type not in COLOR_COMPRESSION:
            raise bad(self.path, "color_compression_type",
                      " or ".join(f"{k} ({n})" for k, n in COLOR_COMPRESSION.items()), self.color_compression_type)
        if self.depth_compression_type not in DEPTH_COMPRESSION:
            raise bad(self.path, "depth_compression_type",
                      " or ".join(f"{k} ({n})" for k, n in DEPTH_COMPRESSION.items()), self.depth_compression_type)
        self._frames_offset = self._f.tell()

    @property
    def color_size(self) -> tuple[int, int]:
        """(width, height) of the colour images."""
        return self.color_width, self.color_height

    @property
    def depth_size(self) -> tuple[int, int]:
        """(width, height) of the depth images."""
        return self.depth_width, self.depth_height

    # ------------------------------------------------------------ frames

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[SensFrame]:
        return self.frames()

    def frames(self) -> Iterator[SensFrame]:
        """Yield every frame in order; a frame that runs past the end of the file raises ``InputError``."""
        pos = self._frames_offset
        for i in range(self.num_frames):
            avail = self._size - pos
            self._f.seek(pos)
            head = self._f.read(min(avail, _FRAME.size))
            imu = _IMU_COUNT.unpack_from(head)[0] if avail >= _IMU_COUNT.size else None
            if imu is not None and avail == _IMU_COUNT.size + IMU_FRAME_SIZE * imu:
                # exactly an IMU block from here to the end: the recording holds i frames, not num_frames
                raise InputError(f"{self.path}: header: {self.num_frames} frames, file: {i}")
            if avail < _FRAME.size:
                raise InputError(f"{self.path}: frame {i}: truncated: expected {_FRAME.size} bytes of frame "
                                 f"header, only {avail} bytes left in the file")
            v = _FRAME.unpack(head)
            color_size, depth_size = v[18], v[19]
            payload = color_size + depth_size
            if payload > avail - _FRAME.size:
                raise InputError(f"{self.path}: frame {i}: truncated: expected {_FRAME.size + payload} bytes "
                                 f"(header + colour + depth), only {avail} bytes left in the file")
            pose = np.array(v[:16], dtype=np.float32).reshape(4, 4)
            yield SensFrame(self, i, pose, v[16], v[17], color_size, depth_size, pos + _FRAME.size)
            pos += _FRAME.size + payload

    def _read_at(self, offset: int, n: int) -> bytes:
        if self._f.closed:
            raise ValueError(f"{self.path} is closed")
        self._f.seek(offset)
        return self._f.read(n)

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "SensFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SensFile({str(self.path)!r}, frames={self.num_frames}, color={self.color_width}x"
                f"{self.color_height} {COLOR_COMPRESSION[self.color_compression_type]}, depth={self.depth_width}x"
                f"{self.depth_height} {DEPTH_COMPRESSION[self.depth_compression_type]})")
