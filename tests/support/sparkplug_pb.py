"""The independent Sparkplug decoder of the tests: pysparkplug and its generated protobuf schema.

pysparkplug 0.6.1 is installed with --no-deps (it declares paho-mqtt<2; its codec works beside
paho 2, its client does not). ``Payload`` is the message class protoc generated from the
specification's ``sparkplug_b.proto``, read by Google's protobuf runtime: typed as Any, since
generated modules carry no annotations.
"""

from __future__ import annotations

import importlib
from typing import Any

_pb: Any = importlib.import_module("pysparkplug._protobuf.sparkplug_b_pb2")
Payload: Any = _pb.Payload

__all__ = ["Payload"]
