"""Read an ONNX file's last op from its bytes, for apps that have onnxruntime but no onnx.

Protobuf wire format: a field is a varint key (number << 3 | wire type) then a varint
(type 0), 8 bytes (1), a varint length and that many bytes (2) or 4 bytes (5).
ModelProto.graph = 7; GraphProto.node = 1, .output = 12; NodeProto.output = 2,
.op_type = 4; ValueInfoProto.name = 1 (onnx.proto3). Anything unreadable reads as
"no Softmax": onnxruntime then refuses the file itself.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["ends_in_softmax"]


def ends_in_softmax(data: bytes) -> bool:
    """Whether the first graph output of serialized model ``data`` comes from a Softmax."""
    try:
        graph = next(v for f, v in _fields(memoryview(data)) if f == 7)
        outputs = [v for f, v in _fields(graph) if f == 12]
        name = next(bytes(v) for f, v in _fields(outputs[0]) if f == 1)
        for node in (v for f, v in _fields(graph) if f == 1):
            fields = list(_fields(node))
            if any(f == 2 and bytes(v) == name for f, v in fields):
                return any(f == 4 and bytes(v) == b"Softmax" for f, v in fields)
    except (StopIteration, IndexError, ValueError, TypeError):
        pass  # not a model onnxruntime could load either
    return False


def _fields(buf: memoryview) -> Iterator[tuple[int, memoryview]]:
    """``(field number, bytes)`` of each length-delimited field; other fields skipped."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        elif wire == 2:
            size, i = _varint(buf, i)
            yield key >> 3, buf[i : i + size]
            i += size
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {i}")


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i
