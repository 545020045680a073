"""The PCI core around the device: configuration space, BAR mapping, bus mastering.

Mirror of ``hw/pci/pci.c`` of QEMU 7.2 (cited as ``pci.c <function> <lines>``; the seed era's
code is the same for what is modelled here, except ``pci_register_bar``'s size check, which is
a variant flag).  Only what decides what a guest sees of the device is modelled:

- which bits of which registers a guest can write (``pci_init_wmask`` 824-833, the BAR wmask of
  ``pci_register_bar`` 1228-1275);
- where a BAR is mapped (``pci_bar_address`` 1376-1441): nowhere while memory decoding is off,
  nowhere while the register holds a sizing pattern, elsewhere once the guest moved it;
- whether the device's own memory writes (an MSI is one) reach memory: the bus-master region is
  enabled by the Master bit (``pci_default_write_config`` 1521-1553).

The guest accesses of a trace (``mmio_*``, ``ring``, ``msix_mask``, ``pba_read``, ``shm_*``) go
to the addresses where the driver placed the BARs (``state.BAR*_ADDR``).  An access that no
longer lands on its BAR (decoding off, the BAR moved or being sized) meets unassigned memory:
it reads 0 and its write is lost, as QEMU's ``unassigned_mem_ops`` do.  A BAR moved onto
another BAR's address is not modelled (``properties/conform.py``, ``ABSTRACTIONS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ivshmem_model.model.state import (
    BAR0_ADDR,
    BAR1_ADDR,
    BAR2_ADDR,
    DEFAULT_PCI,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    Device,
    PciConfig,
    replace,
)

PCI_VENDOR_ID_IVSHMEM = 0x1AF4  # seed 39: PCI_VENDOR_ID_REDHAT_QUMRANET
PCI_DEVICE_ID_IVSHMEM = 0x1110  # seed 40
PCI_CLASS_MEMORY_RAM = 0x0500  # seed 1047; revision 1 (1048), the legacy device 0 (1347)
PCI_SUBSYSTEM = 0x1100_1AF4  # the PCI core's default subsystem ids for Red Hat devices
PCI_STATUS_CAP_LIST = 0x10
IVSHMEM_REG_BAR_SIZE = 0x100  # seed 46
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x08
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04
# pci_init_wmask (pci.c 829-833): IO, MEMORY, MASTER, SERR and INTX_DISABLE are writable.
PCI_COMMAND_WMASK = 0x0507
HOME = (BAR0_ADDR, BAR1_ADDR, BAR2_ADDR)


@dataclass(frozen=True, slots=True)
class Register:
    """A named configuration register; ``offset`` ``None`` is the MSI-X control word, whose
    place is the capability's (the QEMU backend finds it through the capability list)."""

    name: str
    offset: int | None
    size: int
    writable: bool


REGISTERS: dict[str, Register] = {
    r.name: r
    for r in (
        Register("id", 0x00, 4, False),
        Register("command", 0x04, 2, True),
        Register("status", 0x06, 2, False),
        Register("class", 0x08, 4, False),
        Register("bar0", 0x10, 4, True),
        Register("bar1", 0x14, 4, True),
        Register("bar2", 0x18, 4, True),
        Register("bar3", 0x1C, 4, True),
        Register("subsystem", 0x2C, 4, False),
        Register("interrupt_line", 0x3C, 1, True),
        Register("interrupt_pin", 0x3D, 1, False),
        Register("msix_control", None, 2, True),
    )
}


class Region:
    """A registered BAR: its size and the type bits of its register.  A plain class, whose
    ``__init__`` the mypyc build compiles (``regions`` builds three per call)."""

    __slots__ = ("size", "type")

    def __init__(self, size: int, type: int) -> None:
        self.size: Final = size
        self.type: Final = type

    @property
    def is_64bit(self) -> bool:
        return bool(self.type & PCI_BASE_ADDRESS_MEM_TYPE_64)


def msix_bar_size(nentries: int) -> int:
    """The size of the exclusive MSI-X BAR (msix.c ``msix_init_exclusive_bar``, 7.2 lines
    377-412): a 4 KiB BAR, table low and PBA high, grown for more than 128 vectors."""
    bar_size = 4096
    pba_offset = bar_size // 2
    pba_size = -(-nentries // 64) * 8
    if nentries * 16 > pba_offset:
        pba_offset = nentries * 16
    if pba_offset + pba_size > 4096:
        bar_size = pba_offset + pba_size
    return 1 << (bar_size - 1).bit_length()


def regions(d: Device) -> tuple[Region | None, Region | None, Region | None]:
    """BARs 0-2 as realize registered them (seed 903-904, 967; msix.c for BAR1)."""
    bar1 = Region(msix_bar_size(d.msix.entries_nr), 0) if d.msix.present else None
    bar2_type = PCI_BASE_ADDRESS_MEM_PREFETCH | (PCI_BASE_ADDRESS_MEM_TYPE_64 if d.bar2_64bit
                                                 else 0)
    bar2 = Region(d.bar2_size, bar2_type) if d.bar2 and d.bar2_size else None
    return Region(IVSHMEM_REG_BAR_SIZE, 0), bar1, bar2


def _bar_wmask(d: Device, index: int) -> int:
    """The writable bits of BAR register ``index`` (``pci_register_bar`` 1258-1269)."""
    regs = regions(d)
    if index < 3:
        region = regs[index]
        return ~(region.size - 1) & 0xFFFF_FFFF if region is not None else 0
    bar2 = regs[2]  # register 3 is the upper half of a 64-bit BAR2, or nothing
    if bar2 is None or not bar2.is_64bit:
        return 0
    return ~(bar2.size - 1) >> 32 & 0xFFFF_FFFF


def _bar_register(d: Device, index: int) -> int:
    regs = regions(d)
    region = regs[index] if index < 3 else None
    flags = region.type if region is not None else 0
    return flags | d.pci.bars[index] & _bar_wmask(d, index)


def config_read(d: Device, name: str) -> int:
    """``pci_default_read_config`` of one named register."""
    if name == "id":
        return PCI_DEVICE_ID_IVSHMEM << 16 | PCI_VENDOR_ID_IVSHMEM
    if name == "command":
        return d.pci.command
    if name == "status":
        return PCI_STATUS_CAP_LIST if d.msix.present else 0
    if name == "class":
        return PCI_CLASS_MEMORY_RAM << 16 | (0 if d.type == "ivshmem" else 1)
    if name.startswith("bar"):
        return _bar_register(d, int(name[3:]))
    if name == "subsystem":
        return PCI_SUBSYSTEM
    if name == "interrupt_line":
        return d.pci.interrupt_line
    if name == "interrupt_pin":
        return d.interrupt_pin
    # msix_control (msix.c: QSIZE in the low bits, Function Mask bit 14, Enable bit 15)
    return (d.msix.entries_nr - 1) | d.msix.maskall << 14 | d.msix.enable << 15


def config_write(d: Device, name: str, value: int) -> PciConfig:
    """``pci_default_write_config`` of one named register: the bits ``wmask`` lets through.
    (The MSI-X control word goes through ``ivshmem_write_config``, see ``model.system``.)"""
    pci = d.pci
    if name == "command":
        return replace(pci, command=value & PCI_COMMAND_WMASK)
    if name.startswith("bar"):
        index = int(name[3:])
        bars = list(pci.bars)
        bars[index] = value & _bar_wmask(d, index)
        return replace(pci, bars=(bars[0], bars[1], bars[2], bars[3]))
    if name == "interrupt_line":
        return replace(pci, interrupt_line=value & 0xFF)
    return pci  # read-only: wmask 0


def bar_address(d: Device, index: int) -> int | None:
    """``pci_bar_address``: where BAR ``index`` is mapped, ``None`` for PCI_BAR_UNMAPPED."""
    region = regions(d)[index]
    if region is None or not d.pci.command & PCI_COMMAND_MEMORY:
        return None
    raw = d.pci.bars[index]
    if region.is_64bit:
        raw |= d.pci.bars[index + 1] << 32
    new_addr = raw & ~(region.size - 1)
    last_addr = new_addr + region.size - 1
    if last_addr <= new_addr or new_addr == 0:
        return None
    if not region.is_64bit and last_addr >= 0xFFFF_FFFF:
        return None
    if last_addr >= 2**64 - 1:
        return None
    return new_addr


# at_home's verdicts, by the fields of the device that ``regions`` and ``bar_address`` read.
_AT_HOME: dict[tuple[object, ...], bool] = {}


def at_home(d: Device, index: int) -> bool:
    """Whether the guest's accesses to BAR ``index`` reach it (mapped where the driver put it).
    Every guest access asks it: the verdict is kept by what decides it (the configuration
    registers, the BARs' sizes and types), which a few values cover for a whole search."""
    key = (d.pci, d.msix.present, d.msix.entries_nr, d.bar2 != "", d.bar2_size, d.bar2_64bit,
           index)
    home = _AT_HOME.get(key)
    if home is None:
        if len(_AT_HOME) >= 4096:  # a fuzzed guest may write many BAR values
            _AT_HOME.clear()
        home = _AT_HOME[key] = bar_address(d, index) == HOME[index]
    return home


def bus_master(d: Device) -> bool:
    """The Master bit: ``bus_master_enable_region`` is enabled (pci.c 1543-1545)."""
    return bool(d.pci.command & PCI_COMMAND_MASTER)


def guest_reset() -> PciConfig:
    """``pci_do_device_reset`` (pci.c 351-375) clears the command register, the BARs and the
    interrupt line; then the guest driver programs the device again (the defaults)."""
    return DEFAULT_PCI


# -- BAR2: the shared memory as bytes ------------------------------------------------------------


def read_bytes(data: tuple[tuple[int, int], ...], offset: int, size: int) -> int:
    """A little-endian load of ``size`` bytes from sparse ``(offset, byte)`` pairs."""
    value = 0
    for at, byte in data:
        if offset <= at < offset + size:
            value |= byte << 8 * (at - offset)
    return value


def write_bytes(data: tuple[tuple[int, int], ...], offset: int, size: int,
                value: int) -> tuple[tuple[int, int], ...]:
    """A little-endian store; zero bytes are left out so equal memories compare equal."""
    kept = {at: byte for at, byte in data if not offset <= at < offset + size}
    for i in range(size):
        byte = value >> 8 * i & 0xFF
        if byte:
            kept[offset + i] = byte
    return tuple(sorted(kept.items()))
