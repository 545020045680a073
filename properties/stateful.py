"""Hypothesis stateful testing over the model (design §5.2).

``machine_for(config, variant)`` builds a ``RuleBasedStateMachine`` with one rule per action
type, named after the action (``state.ring(...)`` reads like the vocabulary), drawn only among
the actions enabled in the current state, and one ``@invariant`` per safety property of the
registry.  A failing run leaves its (shrunk) trace in ``machine.last_failure`` so callers can
write it as a counterexample file.

Profiles: ``quick`` and ``check`` (fast, derandomized: the same run every time) and ``deep``
(long campaigns; set ``HYPOTHESIS_DATABASE`` to a directory shared between machines).  The fast
profiles skip Hypothesis' shrink phase, whose running time varied from 1 s to 75 s on our
machines; their failures are minimized by ``properties.minimize`` (delta debugging through
``step``) instead, in well under a second.  (Not ``ci``: Hypothesis owns that name and loads it
as the default whenever ``CI`` is set, so redefining it would change every test's settings.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ivshmem_model.model.actions import (
    ACTION_TYPES,
    CONFIG_REGISTERS,
    Action,
    Config,
    ConfigRead,
    ConfigWrite,
    MmioRead,
    MmioWrite,
    Ring,
    ServerSend,
    ShmRead,
    ShmWrite,
)
from ivshmem_model.model.system import OFF_MENU, initial_state, step, successors
from ivshmem_model.model.variants import Variant
from ivshmem_model.properties.invariants import SAFETY, Property

settings.register_profile(
    "quick",
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "check", settings(settings.get_profile("quick"), max_examples=20, stateful_step_count=15)
)
settings.register_profile(
    "deep",
    max_examples=2000,
    stateful_step_count=60,
    deadline=None,
    database=DirectoryBasedExampleDatabase(
        os.environ.get("HYPOTHESIS_DATABASE", ".hypothesis/examples")
    ),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@dataclass(frozen=True, slots=True)
class Failure:
    property: str
    message: str
    steps: tuple[Action, ...]


class FailureBox:
    """Where a machine class leaves its last failing trace (Hypothesis replays the shrunk
    example last, so the last one written is the minimal one)."""

    def __init__(self) -> None:
        self.failure: Failure | None = None


def _rule_for(name: str) -> Any:
    @precondition(lambda self: any(a.name == name for a, _, _ in self.successors))
    @rule(data=st.data())
    def act(self: Any, data: Any) -> None:
        options = [(a, s) for a, s, _ in self.successors if a.name == name]
        action, state = data.draw(st.sampled_from(options), label=name)
        self.apply(action, state)

    act.__name__ = name
    return act


def _free_rule(name: str, make: Any, **strategies: Any) -> Any:
    """A rule with values beyond the configuration's menus (any int64 a hostile server may
    send, any BAR0 access): Hypothesis' own reach, which the explorer's menus do not have."""

    @precondition(lambda self: bool(self.successors))
    @rule(endpoint=st.integers(0, 63), **strategies)
    def act(self: Any, endpoint: int, **values: Any) -> None:
        action = make(endpoint % len(self.state.endpoints), **values)
        outcome = step(self.state, action)
        if outcome is not None:
            self.apply(action, outcome[0])

    act.__name__ = name
    return act


FREE_RULES = {
    "server_send_any": _free_rule(
        "server_send_any", ServerSend,
        value=st.one_of(st.integers(-2, 40), st.sampled_from([65535, 65536, 2**31, -(2**63)]),
                        st.integers(-(2**63), 2**63 - 1)),
        fd=st.sampled_from([None, "eventfd", "shm", "shm:0", "shm:3000", "shm:4096"]),
    ),
    "mmio_write_any": _free_rule(
        "mmio_write_any", MmioWrite,
        offset=st.integers(0, 255), value=st.integers(0, 2**32 - 1),
        size=st.sampled_from([1, 2, 4, 8]),
    ),
    "mmio_read_any": _free_rule(
        "mmio_read_any", MmioRead, offset=st.integers(0, 255), size=st.sampled_from([1, 2, 4, 8]),
    ),
    "ring_any": _free_rule(
        "ring_any", Ring, peer=st.integers(0, 0xFFFF), vector=st.integers(0, 0xFFFF),
    ),
}

# The guest's configuration space and shared memory, outside the explorer's menus: on request
# (``guest=True``), so that the derandomized CI runs keep their reach on the seed's own state.
GUEST_RULES = {
    "config_read_any": _free_rule(
        "config_read_any", ConfigRead, register=st.sampled_from(CONFIG_REGISTERS),
    ),
    "config_write_any": _free_rule(
        "config_write_any", ConfigWrite, register=st.sampled_from(CONFIG_REGISTERS),
        value=st.one_of(st.sampled_from([0, 2, 4, 6, 0xFFFFFFFF, 0x8000, 0xC000]),
                        st.integers(0, 2**32 - 1)),
    ),
    "shm_read_any": _free_rule(
        "shm_read_any", ShmRead, offset=st.sampled_from([0, 8, 4096]), size=st.just(8),
    ),
    "shm_write_any": _free_rule(
        "shm_write_any", ShmWrite, offset=st.sampled_from([0, 8, 4096]),
        value=st.integers(0, 2**64 - 1), size=st.just(8),
    ),
}


HOSTILE_ACTIONS = ("abandon", "garbage")


def _invariant_for(prop: Property) -> Any:
    @invariant()
    def check(self: Any) -> None:
        assert prop.check is not None
        message = prop.check(self.state)
        if message is not None:
            self.box.failure = Failure(prop.name, message, tuple(self.trace))
            raise AssertionError(f"{prop.name}: {message}")

    check.__name__ = f"invariant_{prop.name}"
    return check


def machine_for(config: Config, variant: Variant,
                guest: bool = False) -> type[RuleBasedStateMachine]:
    """A state machine class over ``config`` under ``variant``; ``guest`` adds the rules for
    configuration-space and shared-memory accesses."""
    box = FailureBox()

    def __init__(self: Any) -> None:  # noqa: N807 - becomes the class's __init__
        RuleBasedStateMachine.__init__(self)
        self.state = initial_state(config, variant)
        self.trace = []
        self.successors = successors(self.state)

    def apply(self: Any, action: Action, state: Any) -> None:
        self.trace.append(action)
        self.state = state
        self.successors = successors(state)

    @precondition(lambda self: not self.successors)
    @rule()
    def terminal(self: Any) -> None:
        """A state with no enabled action is legitimate (everyone gone, server down)."""

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "apply": apply,
        "terminal": terminal,
        "box": box,
        "config": config,
        "variant": variant,
    }
    for name, action_type in ACTION_TYPES.items():
        # abandon and garbage are on the menus of a configuration with hostile_clients
        if action_type not in OFF_MENU or (config.hostile_clients and name in HOSTILE_ACTIONS):
            namespace[name] = _rule_for(name)
    namespace.update(FREE_RULES)
    if guest:
        namespace.update(GUEST_RULES)
    for prop in SAFETY:
        namespace[f"invariant_{prop.name}"] = _invariant_for(prop)
    cls = type(f"IvshmemMachine_{variant.name.replace('-', '_').replace('.', '_')}",
               (RuleBasedStateMachine,), namespace)
    return cls


def last_failure(machine: type[RuleBasedStateMachine]) -> Failure | None:
    box = machine.box  # type: ignore[attr-defined]
    assert isinstance(box, FailureBox)
    return box.failure


def run_machine(config: Config, variant: Variant, profile: str = "quick",
                guest: bool = False) -> Failure | None:
    """Run the machine under a settings profile; the failure found, minimized, or ``None``."""
    from hypothesis.stateful import run_state_machine_as_test

    from ivshmem_model.properties.minimize import minimize

    machine = machine_for(config, variant, guest)
    try:
        run_state_machine_as_test(  # type: ignore[no-untyped-call,unused-ignore]
            machine, settings=settings.get_profile(profile)
        )
    except AssertionError:
        failure = last_failure(machine)
        assert failure is not None
        steps = minimize(config, failure.steps, variant, failure.property)
        return Failure(failure.property, failure.message, steps)
    return None
