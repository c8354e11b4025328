"""Which codec implementation is active, and the CI rule that the fast path must be built."""

from __future__ import annotations

import os
import subprocess
import sys

from edge_agent import codecs


def test_fast_path_is_active_or_reported() -> None:
    print(f"reading codec implementation: {codecs.IMPLEMENTATION}")
    assert codecs.IMPLEMENTATION in ("cython", "python")
    if os.environ.get("EDGE_AGENT_PURE_PYTHON") == "1":
        assert codecs.IMPLEMENTATION == "python"
    elif os.environ.get("EDGE_AGENT_REQUIRE_FASTPATH") == "1":
        assert codecs.IMPLEMENTATION == "cython", (
            "EDGE_AGENT_REQUIRE_FASTPATH=1 but the Cython codec is not built: "
            "run `pip install --no-build-isolation -e .`")
    assert (codecs.fast is not None) == (codecs.IMPLEMENTATION == "cython")


def test_pure_python_switch_forces_the_reference() -> None:
    code = ("from edge_agent import codecs; print(codecs.IMPLEMENTATION, "
            "codecs.decode_batch(codecs.encode_batch({'a': ([1], [2])})))")
    env = dict(os.environ, EDGE_AGENT_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.split()[0] == "python"
    assert "{'a': ([1], [2])}" in out


def test_decoder_imports_without_agent_runtime_dependencies() -> None:
    # A cloud consumer has neither aiomqtt nor pymodbus: block them and decode.
    code = (
        "import sys\n"
        "for m in ('aiomqtt', 'paho', 'pymodbus', 'serial', 'msgpack'):\n"
        "    sys.modules[m] = None\n"
        "from edge_agent.codecs import decode_batch, encode_batch, CodecError\n"
        "print(decode_batch(encode_batch({'t': ([1, 2], [0.5, 1.5])})))\n"
        "print(sorted(m for m in sys.modules if m.startswith('edge_agent')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert "{'t': ([1, 2], [0.5, 1.5])}" in out
    loaded = out.splitlines()[1]
    for module in ("edge_agent.runtime.agent", "edge_agent.drivers", "edge_agent.config.loader"):
        assert f"'{module}'" not in loaded
