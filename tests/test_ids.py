"""The one id rule (edge_agent.protocol.ids) and its use by the topic builders and parser."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge_agent.protocol import topics
from edge_agent.protocol.ids import (
    ID_RULE,
    check_broker_user,
    check_gateway_id,
    check_site,
    check_tag,
)

ROOT = Path(__file__).resolve().parent.parent

# Ids the shipped configs, docs, tests and benchmarks use.
GOOD = ["gw-0001", "cab-0117", "demo-gw-01", "gwtail", "gw", "gw1", "gw-bench", "gw-x",
        "gw-00042", "0", "a_b", "x" * 64]


@pytest.mark.parametrize("gid", GOOD)
def test_ids_in_use_are_accepted(gid: str) -> None:
    assert check_gateway_id(gid) == gid
    assert topics.parse_topic(topics.data_topic("edge", gid)) == (gid, topics.DATA, "")


def test_the_shipped_configs_follow_the_rule() -> None:
    for path in sorted((ROOT / "configs").glob("*.toml")):
        gid = tomllib.loads(path.read_text())["gateway"]["id"]
        assert check_gateway_id(gid) == gid, path


@pytest.mark.parametrize(("gid", "why"), [
    ("", "it is empty"),
    ("x" * 65, "it has 65 characters"),
    ("x" * 300, "it has 300 characters"),
    ("gw-01\n", r"must not contain '\\n'"),
    ("gw\nfleet:$7$", r"must not contain '\\n'"),
    ("gw:01", "must not contain ':'"),
    ("gw 01", "must not contain ' '"),
    ("gw/01", "must not contain '/'"),
    ("gw+", r"must not contain '\+'"),
    ("gw#", "must not contain '#'"),
    ("gw\0", r"must not contain '\\x00'"),
    ("gw\t1", r"must not contain '\\t'"),
    ("gw.1", r"must not contain '\.'"),
    ("gwé", "must not contain 'é'"),
    ("$SYS", r"must not start with '\$'"),
    ("-gw", "must not start with '-'"),
    ("_gw", "must not start with '_'"),
    ("GW-01", "uppercase letters \\(did you mean 'gw-01'\\?\\)"),
])
def test_bad_ids_are_refused_naming_value_and_rule(gid: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as err:
        check_gateway_id(gid)
    msg = str(err.value)
    assert msg.startswith("gateway id ") and msg.endswith(f"expected {ID_RULE}")
    assert "\n" not in msg  # one log line, whatever the value holds


@pytest.mark.parametrize("gid", ["fleet", "ingest", "edge-ingest", "edge-ingest-2",
                                 "fleet-0a1b2c3d", "ingest-1", "admin", "root", "mosquitto"])
def test_the_operations_centres_names_are_reserved(gid: str) -> None:
    with pytest.raises(ValueError, match=f"gateway id '{gid}' is reserved"):
        check_gateway_id(gid)
    assert check_broker_user(gid) == gid  # which is what the fleet's own users are called


def test_not_a_string() -> None:
    with pytest.raises(ValueError, match=r"gateway id must be a string .* got int"):
        check_gateway_id(7)


def test_sites_and_tags_follow_the_same_characters_without_reservations() -> None:
    assert check_site("north") == "north" and check_site("demo-block-7") == "demo-block-7"
    assert check_tag("lamps") == "lamps" and check_tag("fleet") == "fleet"
    with pytest.raises(ValueError, match="site 'Harbour Rd / Mill St'"):
        check_site("Harbour Rd / Mill St")
    with pytest.raises(ValueError, match="tag 'a:b'"):
        check_tag("a:b")


@pytest.mark.parametrize("gid", ["fleet", "gw\nx", "gw 1", "x" * 65, "GW"])
def test_topic_builders_refuse_them(gid: str) -> None:
    for build in (topics.state_topic, topics.data_topic, topics.health_topic,
                  topics.reported_topic):
        with pytest.raises(ValueError, match="gateway id"):
            build("edge", gid)
    with pytest.raises(ValueError, match="gateway id"):
        topics.desired_topic("edge", gid, "config")
    with pytest.raises(ValueError, match="gateway id"):
        topics.subscription("edge", topics.DATA, gid)
    assert topics.subscription("edge", topics.DATA) == "edge/+/data"


@pytest.mark.parametrize("topic", ["edge/fleet/data", "edge/GW/health", "edge/gw 1/state",
                                   f"edge/{'x' * 65}/reported", "edge/-x/data"])
def test_parse_topic_does_not_recognise_them(topic: str) -> None:
    assert topics.parse_topic(topic) is None
