"""The vocabulary (design §3) and the file formats (design §6)."""

from __future__ import annotations

import json

import pytest

from ivshmem_model.model.actions import (
    ACTION_TYPES,
    Connect,
    MmioWrite,
    PbaRead,
    Realize,
    ServerSend,
    TraceError,
    action_from_json,
    config_from_json,
    counterexample_from_json,
    load_trace,
    trace_from_json,
)

EXAMPLES = [
    {"action": "connect", "endpoint": 0},
    {"action": "disconnect", "endpoint": 1},
    {"action": "server_send", "endpoint": 0, "value": -1, "fd": "shm"},
    {"action": "server_send", "endpoint": 0, "value": 3, "fd": "shm:3000"},
    {"action": "server_send", "endpoint": 0, "value": 3, "fd": None},
    {"action": "server_send", "endpoint": 0, "value": 0, "fd": "memfd-ro:8192",
     "extra_fds": ["pipe", "devnull", "file"]},
    {"action": "server_exit"},
    {"action": "realize", "endpoint": 0, "device": "ivshmem-doorbell",
     "props": {"chardev": True, "vectors": 2, "master": "auto"}},
    {"action": "deliver", "endpoint": 0},
    {"action": "mmio_read", "endpoint": 0, "offset": 8, "size": 4},
    {"action": "mmio_write", "endpoint": 0, "offset": 12, "value": 65536, "size": 4},
    {"action": "ring", "endpoint": 0, "peer": 1, "vector": 0},
    {"action": "msix_enable", "endpoint": 0, "enabled": True},
    {"action": "msix_function_mask", "endpoint": 0, "masked": False},
    {"action": "msix_mask", "endpoint": 0, "vector": 1, "masked": False},
    {"action": "pba_read", "endpoint": 0},
    {"action": "pba_read", "endpoint": 0, "offset": 4},
    {"action": "handle_irq", "endpoint": 0, "vector": 0},
    {"action": "client_notify", "endpoint": 1, "peer": 0, "vector": 0},
    {"action": "reset", "endpoint": 0},
    {"action": "unplug", "endpoint": 0},
    {"action": "migrate", "endpoint": 0},
    {"action": "shm_read", "endpoint": 0, "offset": 8, "size": 8},
    {"action": "shm_write", "endpoint": 1, "offset": 2, "value": 65535, "size": 2},
    {"action": "config_read", "endpoint": 0, "register": "bar2"},
    {"action": "config_write", "endpoint": 0, "register": "command", "value": 4},
    {"action": "fd_count", "endpoint": 1},
    {"action": "eventfd_poll", "endpoint": 0, "peer": 3, "vector": 1},
    {"action": "abandon", "endpoint": 1},
    {"action": "garbage", "endpoint": 0},
]


def test_every_action_of_the_vocabulary_has_an_example() -> None:
    assert {e["action"] for e in EXAMPLES} == set(ACTION_TYPES)


@pytest.mark.parametrize("obj", EXAMPLES, ids=lambda o: str(o["action"]))
def test_action_json_round_trip(obj: dict[str, object]) -> None:
    action = action_from_json(obj)
    assert action.to_json() == obj
    namespace = vars(__import__("ivshmem_model.model.actions", fromlist=["*"]))
    assert eval(repr(action), namespace) == action


def test_repr_is_valid_python() -> None:
    assert repr(Connect(endpoint=3)) == "Connect(endpoint=3)"
    assert ServerSend(0, -1, "shm:4096").shm_bytes == 4096


@pytest.mark.parametrize(
    ("obj", "where", "text"),
    [
        ({"action": "teleport", "endpoint": 0}, "action", "unknown action"),
        ({"endpoint": 0}, "action", "missing field"),
        ({"action": "connect"}, "endpoint", "missing field"),
        ({"action": "connect", "endpoint": "0"}, "endpoint", "expected an integer"),
        ({"action": "connect", "endpoint": True}, "endpoint", "expected an integer"),
        ({"action": "connect", "endpoint": 0, "extra": 1}, "extra", "unknown field"),
        ({"action": "server_send", "endpoint": 0, "value": 2**63, "fd": None}, "value",
         "out of range"),
        ({"action": "server_send", "endpoint": 0, "value": 1, "fd": "socket"}, "fd",
         "expected null"),
        ({"action": "mmio_write", "endpoint": 0, "offset": 12, "value": 1, "size": 3}, "size",
         "expected 1, 2, 4 or 8"),
        ({"action": "mmio_read", "endpoint": 0, "offset": 256, "size": 4}, "offset",
         "out of range"),
        ({"action": "ring", "endpoint": 0, "peer": 65536, "vector": 0}, "peer", "out of range"),
        ({"action": "realize", "endpoint": 0, "device": "virtio"}, "device", "unknown device"),
        ({"action": "realize", "endpoint": 0, "device": "ivshmem-doorbell",
          "props": {"master": "maybe"}}, "props.master", "expected one of"),
        ({"action": "realize", "endpoint": 0, "device": "ivshmem-doorbell",
          "props": {"vectors": -1}}, "props.vectors", "out of range"),
        ({"action": "pba_read", "endpoint": 0, "offset": 3}, "offset", "multiple of 4"),
        ({"action": "msix_enable", "endpoint": 0, "enabled": 1}, "enabled", "true or false"),
        ({"action": "shm_read", "endpoint": 0, "offset": 6, "size": 4}, "offset",
         "not a multiple of the size"),
        ({"action": "shm_write", "endpoint": 0, "offset": 0, "value": 256, "size": 1}, "value",
         "does not fit"),
        ({"action": "shm_read", "endpoint": 0, "offset": 0, "size": 4.0}, "size",
         "expected 1, 2, 4 or 8"),
        ({"action": "config_read", "endpoint": 0, "register": "bar9"}, "register",
         "unknown register"),
        ({"action": "config_write", "endpoint": 0, "register": "command", "value": 2**32},
         "value", "out of range"),
        ({"action": "realize", "endpoint": 0, "device": "ivshmem-plain",
          "props": {"memdev_size": 4096, "memdev_backend": "tmpfs"}}, "props.memdev_backend",
         "expected one of memfd, ram, file"),
        ({"action": "realize", "endpoint": 0, "device": "ivshmem-doorbell",
          "props": {"chardev": True, "chardev_backend": "pty"}}, "props.chardev_backend",
         "expected one of socket, null"),
        ({"action": "server_send", "endpoint": 0, "value": 0, "fd": "pipe:4096"}, "fd",
         "expected null"),
        ({"action": "server_send", "endpoint": 0, "value": 0, "extra_fds": [None]},
         "extra_fds[0]", "expected an fd kind"),
        ({"action": "server_send", "endpoint": 0, "value": 0, "extra_fds": "eventfd"},
         "extra_fds", "expected a list"),
        ([1, 2], "", "expected an object"),
    ],
)
def test_bad_action_names_the_field(obj: object, where: str, text: str) -> None:
    with pytest.raises(TraceError) as info:
        action_from_json(obj)
    assert info.value.where == where
    assert text in info.value.message


def test_unknown_property_is_kept_for_the_device_to_reject() -> None:
    action = action_from_json({"action": "realize", "endpoint": 0,
                               "device": "ivshmem-doorbell", "props": {"msi": False}})
    assert isinstance(action, Realize) and action.prop("msi") is False


def test_trace_error_names_step_and_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.trace.json"
    path.write_text(json.dumps({
        "format": "ivshmem-trace/1", "config": {"endpoints": 1},
        "steps": [{"action": "connect", "endpoint": 0},
                  {"action": "ring", "endpoint": 0, "peer": 1}],
    }))
    with pytest.raises(TraceError) as info:
        load_trace(str(path))
    assert str(info.value) == f"{path}: steps[1].vector: missing field for action \"ring\""


def test_trace_endpoint_out_of_range() -> None:
    with pytest.raises(TraceError) as info:
        trace_from_json({"format": "ivshmem-trace/1", "config": {"endpoints": 1},
                         "steps": [{"action": "connect", "endpoint": 1}]})
    assert info.value.where == "steps[0].endpoint"
    assert "out of range" in info.value.message


def test_invalid_json_and_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(TraceError, match="invalid JSON"):
        load_trace(str(path))
    with pytest.raises(TraceError, match="no such file"):
        load_trace(str(tmp_path / "absent.json"))


def test_config_defaults_and_extensions() -> None:
    config = config_from_json({"endpoints": 2, "clients": [1],
                               "server": {"messages": [[0, None], [-1, "shm"]]},
                               "realize": [{"device": "ivshmem-plain",
                                            "props": {"memdev_size": 4096}}]})
    assert config.server.policy == "contrib" and config.server.vectors == 1
    assert config.host.ioeventfd and not config.host.kvm_msi_irqfd
    assert config.clients == (1,)
    assert config.server.messages == ((0, None), (-1, "shm"))
    assert config_from_json(config.to_json()) == config
    with pytest.raises(TraceError) as info:
        config_from_json({"server": {"policy": "evil"}})
    assert info.value.where == "config.server.policy"
    with pytest.raises(TraceError) as info:
        config_from_json({"clients": [5], "endpoints": 2})
    assert info.value.where == "config.clients[0]"


def test_config_contrib_failure_extensions() -> None:
    assert "socket_capacity" not in config_from_json({}).to_json()["server"]
    assert "hostile_clients" not in config_from_json({}).to_json()
    config = config_from_json({"server": {"socket_capacity": 4}, "hostile_clients": True})
    assert (config.server.socket_capacity, config.hostile_clients) == (4, True)
    assert config_from_json(config.to_json()) == config
    with pytest.raises(TraceError) as info:
        config_from_json({"server": {"socket_capacity": 2}})
    assert info.value.where == "config.server.socket_capacity"


def test_counterexample_round_trip() -> None:
    obj = {
        "format": "ivshmem-counterexample/1", "name": "x", "property": "no_abort",
        "summary": "s", "origin": "o",
        "trace": {"config": {"endpoints": 1}, "steps": [{"action": "connect", "endpoint": 0}]},
        "expect": {"seed": {"violates": "no_abort", "step": 0}, "fixed": "holds"},
    }
    cx = counterexample_from_json(obj)
    again = cx.to_json()
    assert again["expect"] == obj["expect"]
    assert again["trace"]["steps"] == obj["trace"]["steps"]
    with pytest.raises(TraceError) as info:
        counterexample_from_json({**obj, "expect": {"seed": "maybe"}})
    assert info.value.where == "expect.seed"


def test_pba_read_offset_is_optional_in_json() -> None:
    assert PbaRead(0).to_json() == {"action": "pba_read", "endpoint": 0}
    assert MmioWrite(0, 12, 1).size == 4


def test_mmio_write_value_must_fit_its_size() -> None:
    with pytest.raises(TraceError) as info:
        action_from_json({"action": "mmio_write", "endpoint": 0, "offset": 12,
                          "value": 65536, "size": 1})
    assert info.value.where == "value" and "does not fit in 1 byte" in info.value.message
