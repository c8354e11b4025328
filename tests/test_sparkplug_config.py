"""The [sparkplug] section: off by default, ids checked as topic levels, every problem named."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config.loader import load_config
from tests.test_config import BASE, one, write


def test_sparkplug_is_off_by_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    assert not cfg.sparkplug.enabled


def test_defaults_name_the_node_after_the_gateway(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE + '[sparkplug]\nenabled = true\ngroup_id = "city"\n'))
    sp = cfg.sparkplug
    assert (sp.enabled, sp.group_id, sp.edge_node_id, sp.primary_host_id, sp.client_id) == (
        True, "city", "gw-01", None, "gw-01-spb")


def test_every_key_is_read(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE + '[sparkplug]\nenabled = true\ngroup_id = "Städte"\n'
                            'edge_node_id = "cabinet 7"\nprimary_host_id = "ignition"\n'
                            'client_id = "spb-7"\n'))
    sp = cfg.sparkplug
    assert (sp.group_id, sp.edge_node_id, sp.primary_host_id, sp.client_id) == (
        "Städte", "cabinet 7", "ignition", "spb-7")


def test_enabled_needs_a_group_id(tmp_path: Path) -> None:
    one(tmp_path, BASE + "[sparkplug]\nenabled = true\n", "sparkplug.group_id: missing",
        "Sparkplug group id")


@pytest.mark.parametrize("key", ["group_id", "edge_node_id", "primary_host_id"])
@pytest.mark.parametrize("bad", ["a/b", "a+b", "#", "$SYS", "", "tab\there", "x" * 129])
def test_ids_must_be_one_topic_level(tmp_path: Path, key: str, bad: str) -> None:
    # [tck-id-topic-structure-namespace-valid-group-id]
    # [tck-id-topic-structure-namespace-valid-edge-node-id]
    text = BASE + f'[sparkplug]\ngroup_id = "g"\n{key} = {bad!r}\n'.replace("'", '"')
    text = text.replace('group_id = "g"\ngroup_id', "group_id")
    one(tmp_path, text, f"sparkplug.{key}", "none of '+', '/', '#'")


def test_unknown_keys_and_wrong_types_are_named(tmp_path: Path) -> None:
    one(tmp_path, BASE + "[sparkplug]\nenabeld = true\n", "sparkplug.enabeld: unknown key")
    one(tmp_path, BASE + '[sparkplug]\nenabled = "yes"\n', "sparkplug.enabled", "a boolean")


def test_the_sparkplug_client_id_must_differ_from_the_uplinks(tmp_path: Path) -> None:
    one(tmp_path, BASE + '[sparkplug]\ngroup_id = "g"\nclient_id = "gw-01"\n',
        "sparkplug.client_id", "other than mqtt.client_id")


def test_check_config_summarises_the_sparkplug_node(tmp_path: Path) -> None:
    from edge_agent.tools.checkconfig import summarize

    cfg = load_config(write(tmp_path, BASE + '[sparkplug]\nenabled = true\ngroup_id = "city"\n'
                            'primary_host_id = "scada"\n'))
    assert ("Sparkplug B edge node spBv1.0/city/.../gw-01, client id gw-01-spb; births wait for "
            "primary host scada") in summarize(cfg)
    assert "Sparkplug" not in summarize(load_config(write(tmp_path, BASE)))
