"""``model.pci.at_home`` keeps its verdicts by the device fields that decide them: each kept
verdict must be the one ``bar_address`` gives (pci.c ``pci_bar_address``)."""

from __future__ import annotations

import itertools
from dataclasses import replace

from ivshmem_model.model import pci
from ivshmem_model.model.state import (
    BAR0_ADDR,
    BAR1_ADDR,
    BAR2_ADDR,
    PCI_COMMAND_MASTER,
    Device,
    Msix,
    PciConfig,
)

DOORBELL = Device("ivshmem-doorbell", 3, 2, bar2="server", bar2_size=1 << 22,
                  msix=Msix(present=True, entries_nr=2))

VARIANTS = [
    DOORBELL,
    replace(DOORBELL, pci=PciConfig(command=PCI_COMMAND_MASTER)),  # memory decoding off
    replace(DOORBELL, pci=PciConfig(bars=(BAR0_ADDR + 0x100, BAR1_ADDR, BAR2_ADDR, 0))),
    replace(DOORBELL, pci=PciConfig(bars=(0, BAR1_ADDR, BAR2_ADDR, 0))),  # BAR0 at 0
    replace(DOORBELL, pci=PciConfig(bars=(BAR0_ADDR, BAR1_ADDR, BAR2_ADDR, 1))),  # BAR2 above 4G
    replace(DOORBELL, bar2_64bit=False,
            pci=PciConfig(bars=(BAR0_ADDR, BAR1_ADDR, BAR2_ADDR, 1))),  # 32-bit: upper ignored
    replace(DOORBELL, bar2_size=0),
    replace(DOORBELL, bar2=""),
    replace(DOORBELL, msix=Msix()),
    # a 4 MiB MSI-X BAR (synthetic: more entries than PCI allows): the address drops bits
    replace(DOORBELL, msix=Msix(present=True, entries_nr=1 << 18)),
    replace(DOORBELL, intrmask=1),  # decides nothing: shares the verdicts of DOORBELL
]


def test_kept_verdicts_are_bar_addresses_verdicts() -> None:
    verdicts = set()
    for device, index in itertools.product(VARIANTS + VARIANTS[::-1], range(3)):
        expected = pci.bar_address(device, index) == pci.HOME[index]
        assert pci.at_home(device, index) is expected, (device, index)
        verdicts.add((index, expected))
    assert len(verdicts) == 6  # every BAR both reached and missed: the variants matter
